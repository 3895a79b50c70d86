#!/usr/bin/env bash
# Runs webhookd's whole test suite on a fresh Debian machine:
# installs RabbitMQ if missing, starts a fresh private broker on 127.0.0.1:5699 for the
# tests (stopped on exit), then runs `cargo test --workspace --locked "$@"`, then the alert
# rules' unit tests (promtool; installs Debian's prometheus if missing), then schemathesis
# against the API (scripts/schemathesis.sh; installs it into .local/ once).
# Exit code: cargo's, or else promtool's, or else schemathesis'.
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
rc=0
cargo test --workspace --locked "$@" || rc=$?
# The alerting rules' unit tests; promtool comes with Debian's prometheus package. A failure
# counts toward the exit code (cargo's comes first).
promtool_rc=0
{
    "$REPO/scripts/install-prometheus.sh"
    promtool test rules deploy/prometheus/alerts.test.yml
} || promtool_rc=$?
echo "test.sh: promtool test rules exit code $promtool_rc" >&2
((rc != 0)) || rc=$promtool_rc
# The API against its OpenAPI document, with generated requests (scripts/schemathesis.sh).
schemathesis_rc=0
"$REPO/scripts/schemathesis.sh" || schemathesis_rc=$?
echo "test.sh: schemathesis exit code $schemathesis_rc" >&2
((rc != 0)) || rc=$schemathesis_rc
t3=$SECONDS

stop_brokers
trap - EXIT
t4=$SECONDS
echo "test.sh: install $((t1 - t0))s, broker start $((t2 - t1))s, cargo test $((t3 - t2))s," \
    "broker stop $((t4 - t3))s, total $((t4 - t0))s; exit code $rc" >&2
exit "$rc"
