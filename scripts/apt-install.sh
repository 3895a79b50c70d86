#!/usr/bin/env bash
# Installs Debian packages with apt-get, as root or through sudo, without prompts.
# Usage: apt-install.sh PACKAGE... (the scripts that need a package check for it first).
set -euo pipefail
sudo=()
if ((EUID != 0)); then
    command -v sudo >/dev/null 2>&1 || { echo "apt-install.sh: need root or sudo to install $*" >&2; exit 1; }
    sudo=(sudo)
fi
echo "apt-install.sh: installing $*" >&2
"${sudo[@]}" apt-get update >&2
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2
