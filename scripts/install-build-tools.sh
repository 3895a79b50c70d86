#!/usr/bin/env bash
# Installs what building webhookd needs besides Rust, if missing: a C compiler and make
# (jemalloc and aws-lc are C libraries built by cargo). Used by scripts/test.sh and
# scripts/run-stack.sh.
set -euo pipefail
if command -v cc >/dev/null 2>&1 && command -v make >/dev/null 2>&1; then
    exit 0
fi
sudo=()
if ((EUID != 0)); then
    command -v sudo >/dev/null 2>&1 || { echo "install-build-tools.sh: need root or sudo" >&2; exit 1; }
    sudo=(sudo)
fi
echo "install-build-tools.sh: installing gcc and make" >&2
"${sudo[@]}" apt-get update >&2
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev make >&2
