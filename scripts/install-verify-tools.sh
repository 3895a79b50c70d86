#!/usr/bin/env bash
# Installs what the receiver-side signature verifiers in examples/verify/ need, if missing:
# Go, Node.js and a JDK (Debian packages, through scripts/apt-install.sh), and a Python venv at
# .local/verify-venv with examples/verify/python/requirements.txt. Prints one line per tool.
# Used by scripts/test.sh for tests/it/verify_snippets.rs; fast when everything is there.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.local/verify-venv"
REQUIREMENTS="$REPO/examples/verify/python/requirements.txt"

has() { command -v "$1" >/dev/null 2>&1; }

# The Python venv is made by the python3 on PATH when it can make one (with pip), otherwise
# by Debian's.
python=python3
can_make_venvs() { "$1" -c 'import venv, ensurepip' >/dev/null 2>&1; }

packages=()
has go || packages+=(golang-go)
has node || packages+=(nodejs)
# `java Verify.java` compiles the source first: it needs a JDK (jdk.compiler), not just a JRE.
{ has java && has javac; } || packages+=(default-jdk-headless)
if ! has "$python" || ! can_make_venvs "$python"; then
    packages+=(python3 python3-venv)
    python=/usr/bin/python3
fi
if ((${#packages[@]})); then
    "$REPO/scripts/apt-install.sh" "${packages[@]}"
fi

# The venv is (re)made when it is missing, broken, or made from other requirements.
if ! { [[ -x "$VENV/bin/python" ]] && cmp -s "$REQUIREMENTS" "$VENV/requirements.txt" \
    && "$VENV/bin/python" -c 'import jwcrypto, cryptography' >/dev/null 2>&1; }; then
    echo "install-verify-tools.sh: making $VENV" >&2
    rm -rf "$VENV"
    mkdir -p "$REPO/.local"
    "$python" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS" >&2
    cp "$REQUIREMENTS" "$VENV/requirements.txt"
fi

echo "install-verify-tools.sh: go: $(go version)"
echo "install-verify-tools.sh: node: $(node --version)"
echo "install-verify-tools.sh: java: $(java -version 2>&1 | head -n 1)"
echo "install-verify-tools.sh: python: $("$VENV/bin/python" --version) in $VENV ($("$VENV/bin/python" -c 'import importlib.metadata as m; print(", ".join(p + " " + m.version(p) for p in ("jwcrypto", "cryptography")))'))"
