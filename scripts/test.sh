#!/usr/bin/env bash
# Runs webhookd's whole test suite on a fresh Debian machine:
# installs RabbitMQ (and tinyproxy, for the egress proxy tests) if missing, starts a fresh private broker on 127.0.0.1:5699 for the
# tests (stopped on exit), then runs `cargo test --workspace --locked --no-fail-fast "$@"`
# (every test program runs even when an earlier one fails), then the alert rules' unit tests
# (promtool; installs Debian's prometheus if missing), then the Kubernetes manifests against
# the API schemas (scripts/validate-deploy.sh; installs kubernetes-validate into .local/ once),
# then schemathesis against the API
# (scripts/schemathesis.sh; installs it into .local/ once), then `cargo fmt --check` and
# `cargo clippy --all-targets -- -D warnings`.
# It ends with one line per test program (passed / failed, and which tests failed), one per
# other check, and a line of totals. The whole cargo output is kept in .local/test-output.log.
# Exit code: 0 when everything passed; otherwise the first failure's: cargo's, promtool's,
# the manifests', schemathesis', fmt's, clippy's.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
RMQ="$REPO/scripts/rabbitmq.sh"
PORT=5699
DIR="$REPO/.local/test-rabbitmq"
# Brokers started by the tests (crates/harness/src/broker.rs) are listed here as
# "<port><TAB><dir>"; they are stopped on exit in case a test process died before
# it could stop them itself.
BROKER_LIST="$REPO/.local/test-brokers.list"

if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

t0=$SECONDS
"$RMQ" install
"$REPO/scripts/install-build-tools.sh"
# The egress proxy tests run a real proxy (tests/it/egress_proxy.rs); the documentation's
# examples (tests/it/doc_examples.rs) use curl, jq and python3.
missing=()
for tool in tinyproxy curl jq python3; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
((${#missing[@]} == 0)) || "$REPO/scripts/apt-install.sh" "${missing[@]}"
# The receiver-side signature verifiers in four languages (tests/it/verify_snippets.rs), each
# required to run here.
"$REPO/scripts/install-verify-tools.sh"
export WEBHOOKD_VERIFY_SNIPPETS=all

stop_brokers() {
    local port dir
    if [[ -f "$BROKER_LIST" ]]; then
        while IFS=$'\t' read -r port dir; do
            [[ "$port" =~ ^[0-9]+$ && -d "$dir" ]] || continue
            WEBHOOKD_RMQ_PORT="$port" WEBHOOKD_RMQ_DIR="$dir" "$RMQ" stop 2>/dev/null || true
        done <"$BROKER_LIST"
        rm -f "$BROKER_LIST"
    fi
    WEBHOOKD_RMQ_PORT=$PORT WEBHOOKD_RMQ_DIR="$DIR" "$RMQ" stop || true
}

# Brokers left over by an interrupted run must go before their dir is wiped.
mkdir -p "$REPO/.local"
stop_brokers
rm -rf "$DIR"

trap stop_brokers EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

t1=$SECONDS
url="$(WEBHOOKD_RMQ_PORT=$PORT WEBHOOKD_RMQ_DIR="$DIR" "$RMQ" start | tail -n 1)"
[[ "$url" == amqp://* ]] || { echo "test.sh: broker start printed no AMQP URL" >&2; exit 1; }
export WEBHOOKD_TEST_AMQP_URL="$url"
export WEBHOOKD_RABBITMQ_SCRIPT="$RMQ"
export WEBHOOKD_TEST_BROKER_LIST="$BROKER_LIST"
echo "test.sh: broker at $url" >&2

t2=$SECONDS
LOG="$REPO/.local/test-output.log"
rc=0
# --no-fail-fast: one failing program must not keep the others from running.
# (pipefail: rc is cargo's exit code, or tee's if only tee failed.)
cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$LOG" || rc=$?
# The alerting rules' unit tests; promtool comes with Debian's prometheus package.
promtool_rc=0
{
    "$REPO/scripts/install-prometheus.sh"
    promtool test rules deploy/prometheus/alerts.test.yml
} || promtool_rc=$?
# The Kubernetes manifests against the API schemas (scripts/validate-deploy.sh).
deploy_rc=0
"$REPO/scripts/validate-deploy.sh" || deploy_rc=$?
# The API against its OpenAPI document, with generated requests (scripts/schemathesis.sh).
schemathesis_rc=0
"$REPO/scripts/schemathesis.sh" || schemathesis_rc=$?
t3=$SECONDS

stop_brokers
trap - EXIT
t4=$SECONDS

# Lints, after the broker is gone (they need none).
fmt_rc=0
cargo fmt --all --check >&2 || fmt_rc=$?
clippy_rc=0
cargo clippy --workspace --all-targets --locked -- -D warnings >&2 || clippy_rc=$?
t5=$SECONDS

verdict() { if (($1 == 0)); then echo "passed"; else echo "FAILED (exit code $1)"; fi; }
{
    echo
    echo "test.sh: ---- summary"
    awk -f "$REPO/scripts/test-summary.awk" "$LOG"
    echo "test.sh: cargo test exit code $rc"
    echo "test.sh: promtool test rules: $(verdict $promtool_rc)"
    echo "test.sh: Kubernetes manifests: $(verdict $deploy_rc)"
    echo "test.sh: schemathesis: $(verdict $schemathesis_rc)"
    echo "test.sh: cargo fmt --check: $(verdict $fmt_rc)"
    echo "test.sh: cargo clippy -D warnings: $(verdict $clippy_rc)"
} >&2
for r in $promtool_rc $deploy_rc $schemathesis_rc $fmt_rc $clippy_rc; do
    ((rc != 0)) || rc=$r
done
echo "test.sh: install $((t1 - t0))s, broker start $((t2 - t1))s, tests $((t3 - t2))s," \
    "broker stop $((t4 - t3))s, lints $((t5 - t4))s, total $((t5 - t0))s;" \
    "$(if ((rc == 0)); then echo "ALL PASSED"; else echo "FAILED, exit code $rc"; fi)" >&2
exit "$rc"
