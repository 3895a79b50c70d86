#!/usr/bin/env bash
# Installs Debian's prometheus package (prometheus and promtool) if either is missing.
# Used by scripts/test.sh (promtool for the alert rules' tests) and scripts/run-stack.sh.
# The package's own service is never started (this project runs prometheus itself).
set -euo pipefail
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    exit 0
fi
"$(dirname "${BASH_SOURCE[0]}")/apt-install.sh" prometheus
command -v promtool >/dev/null 2>&1 || { echo "install-prometheus.sh: promtool is not on PATH after install" >&2; exit 1; }
