#!/usr/bin/env bash
# Installs what building webhookd needs besides Rust, if missing: a C compiler and make
# (jemalloc and aws-lc are C libraries built by cargo). Used by scripts/test.sh and
# scripts/run-stack.sh.
set -euo pipefail
if command -v cc >/dev/null 2>&1 && command -v make >/dev/null 2>&1; then
    exit 0
fi
"$(dirname "${BASH_SOURCE[0]}")/apt-install.sh" gcc libc6-dev make
