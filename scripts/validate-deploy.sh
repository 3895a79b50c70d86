#!/usr/bin/env bash
# Checks the Kubernetes manifests of deploy/kubernetes/ without a cluster: each against the API
# schemas of the oldest and the newest Kubernetes we document (kubernetes-validate --strict:
# unknown fields fail too), and that kustomization.yaml lists every manifest but the example
# Secret. (The RabbitMQ definitions are checked by tests/it/deploy.rs: they are what webhookd
# declares with the ConfigMap's configuration, and they import into a 3-node cluster.)
#
# Usage: scripts/validate-deploy.sh      (scripts/test.sh runs it)
# Installs kubernetes-validate (pinned) into $WEBHOOKD_KUBE_VALIDATE_VENV, default
# <repo>/.local/kubernetes-validate, once. Exit code: 0 when everything passed.
set -euo pipefail

VERSION=1.37.0
KUBERNETES_VERSIONS=(1.29.0 1.37.0)
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
VENV="${WEBHOOKD_KUBE_VALIDATE_VENV:-$REPO/.local/kubernetes-validate}"

log() { printf 'validate-deploy.sh: %s\n' "$*" >&2; }

if [[ "$("$VENV/bin/pip" show kubernetes-validate 2>/dev/null | sed -n 's/^Version: //p')" != "$VERSION" ]]; then
    log "installing kubernetes-validate $VERSION into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$VERSION"
fi

rc=0
manifests=()
for f in deploy/kubernetes/*.yaml; do
    [[ "$(basename "$f")" == kustomization.yaml ]] || manifests+=("$f")
done
for version in "${KUBERNETES_VERSIONS[@]}"; do
    if "$VENV/bin/kubernetes-validate" --strict --quiet -k "$version" "${manifests[@]}"; then
        log "Kubernetes $version: ${#manifests[@]} manifests valid"
    else
        log "Kubernetes $version: invalid manifests (above)"
        rc=1
    fi
done
for f in "${manifests[@]}"; do
    name="$(basename "$f")"
    [[ "$name" == secret.example.yaml ]] && continue
    if ! grep -qxF "  - $name" deploy/kubernetes/kustomization.yaml; then
        log "deploy/kubernetes/kustomization.yaml does not list $name"
        rc=1
    fi
done

exit "$rc"
