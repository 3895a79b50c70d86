#!/usr/bin/env bash
# Three webhookd replicas acting as one service, on a private 3-node RabbitMQ cluster on this
# machine: the deployment of deploy/kubernetes/ in miniature, for trying failover by hand
# (docs/cluster-local.md, "Three replicas by hand").
#
# Usage: scripts/run-replicas.sh start          cluster + 3 replicas in the background; prints
#                                               their addresses and a first API token
#        scripts/run-replicas.sh status         each replica's readiness, the cluster's state
#        scripts/run-replicas.sh kill N [wipe]  SIGKILL of replica N (1-3); with `wipe`, its
#                                               data dir is deleted too (a node lost with its disk)
#        scripts/run-replicas.sh stop-one N     SIGTERM of replica N (a graceful stop)
#        scripts/run-replicas.sh restart N      starts replica N again (after kill or stop-one)
#        scripts/run-replicas.sh stop           stops the replicas, then the cluster
#
# Replica N listens on 127.0.0.1:818N, talks to cluster node N, keeps its data in
# .local/replicas/rN/ (log: .local/replicas/rN.log). All three share one signing key pair,
# generated once into .local/replicas/keys.env, and deploy/local/webhookd.toml with
# `amqp.queue_type = "quorum"`. The cluster is scripts/rabbitmq-cluster.sh's, on its default
# ports (5701-5703); it needs Debian's rabbitmq-server (installed if missing).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
CLUSTER="$REPO/scripts/rabbitmq-cluster.sh"
HERE="$REPO/.local/replicas"
CONFIG="$REPO/deploy/local/webhookd.toml"
BIN="$REPO/target/release/webhookd"

log() { printf 'run-replicas.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

replica_number() {
    [[ "${1:-}" =~ ^[123]$ ]] || die "a replica number (1, 2 or 3) is needed, not '${1:-}'"
    echo "$1"
}
http_of() { echo "127.0.0.1:818$1"; }
pid_of() { cat "$HERE/r$1.pid" 2>/dev/null || true; }
alive() { local pid; pid="$(pid_of "$1")"; [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; }
# /readyz answers 200 (bash's /dev/tcp: no HTTP client needed).
ready() {
    local first
    first="$( (exec 3<>"/dev/tcp/127.0.0.1/818$1" &&
        printf 'GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3 && head -n 1 <&3) 2>/dev/null)" || return 1
    [[ "$first" == *" 200 "* ]]
}

# The environment of replica N (its node, port, data dir, the shared keys).
replica_env() {
    local n="$1" url
    url="$("$CLUSTER" urls | sed -n "${n}p")"
    [[ "$url" == amqp://* ]] || die "no URL for cluster node $n (is the cluster started?)"
    # shellcheck disable=SC1091
    set -a; source "$HERE/keys.env"; set +a
    export WEBHOOKD_AMQP_URL="$url" WEBHOOKD_AMQP_QUEUE_TYPE=quorum
    export WEBHOOKD_HTTP_LISTEN="$(http_of "$n")" WEBHOOKD_DATA_DIR="$HERE/r$n"
}

start_replica() {
    local n="$1"
    alive "$n" && { log "replica $n runs already (pid $(pid_of "$n"))"; return; }
    mkdir -p "$HERE/r$n"
    (
        replica_env "$n"
        exec nohup "$BIN" serve --config "$CONFIG" >>"$HERE/r$n.log" 2>&1 </dev/null
    ) &
    echo $! >"$HERE/r$n.pid"
    log "replica $n started (pid $!), http://$(http_of "$n"), log $HERE/r$n.log"
}

wait_ready() {
    local n="$1" i
    for ((i = 0; i < 240; i++)); do
        ready "$n" && { log "replica $n ready"; return; }
        alive "$n" || die "replica $n exited; see $HERE/r$n.log"
        sleep 0.5
    done
    die "replica $n not ready after 120 s; see $HERE/r$n.log"
}

stop_replica() {
    local n="$1" pid i
    pid="$(pid_of "$n")"
    if alive "$n"; then
        kill -TERM "$pid"
        for ((i = 0; i < 60; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && { log "replica $n still runs after 30 s: SIGKILL"; kill -KILL "$pid"; }
        log "replica $n stopped"
    fi
    rm -f "$HERE/r$n.pid"
}

case "${1:-}" in
start)
    "$REPO/scripts/rabbitmq.sh" install
    "$REPO/scripts/install-build-tools.sh"
    cargo build --release --locked -p webhookd
    mkdir -p "$HERE"
    if [[ ! -s "$HERE/keys.env" ]]; then
        (umask 077; "$BIN" keys generate --format env >"$HERE/keys.env")
        log "generated the replicas' shared signing keys into $HERE/keys.env"
    fi
    "$CLUSTER" start >/dev/null
    # The topology first, as an operator would import it (docs/operations-deploy.md): the
    # replicas then find their queues and streams instead of racing to create them.
    (
        replica_env 1
        "$BIN" --config "$CONFIG" broker definitions >"$HERE/definitions.json"
    )
    "$CLUSTER" ctl 1 import_definitions "$HERE/definitions.json" >/dev/null
    log "imported webhookd's topology ($HERE/definitions.json)"
    for n in 1 2 3; do start_replica "$n"; done
    for n in 1 2 3; do wait_ready "$n"; done
    # A first token, once: through the catalog stream, valid on every replica.
    if [[ ! -s "$HERE/token" ]]; then
        (
            replica_env 1
            umask 077
            "$BIN" --config "$CONFIG" token create --user-id local-admin --merchant-id shop-1 \
                --role 'CanCreateWebhook@*' --role 'CanUpdateWebhook@*' --role 'CanGetWebhooks@*' \
                --role CanManageDeliveries >"$HERE/token"
        )
    fi
    log "three replicas: http://$(http_of 1) http://$(http_of 2) http://$(http_of 3)"
    log "an API token for all of them (OBP every bank, Rabo merchant shop-1, the delivery log): $HERE/token"
    log "try: $0 kill 2 wipe; $0 status; $0 restart 2   (docs/cluster-local.md)"
    ;;
status)
    for n in 1 2 3; do
        if ready "$n"; then state="ready"; elif alive "$n"; then state="running, not ready"; else state="stopped"; fi
        echo "replica $n http://$(http_of "$n") pid $(pid_of "$n"): $state"
    done
    "$CLUSTER" status || true
    ;;
kill)
    n="$(replica_number "${2:-}")"
    pid="$(pid_of "$n")"
    alive "$n" && kill -KILL "$pid" && log "replica $n killed (SIGKILL, pid $pid)"
    rm -f "$HERE/r$n.pid"
    if [[ "${3:-}" == wipe ]]; then
        rm -rf "$HERE/r$n"
        log "replica $n's data dir deleted"
    fi
    ;;
stop-one)
    stop_replica "$(replica_number "${2:-}")"
    ;;
restart)
    n="$(replica_number "${2:-}")"
    [[ -s "$HERE/keys.env" ]] || die "run '$0 start' first"
    start_replica "$n"
    wait_ready "$n"
    ;;
stop)
    for n in 1 2 3; do stop_replica "$n"; done
    "$CLUSTER" stop
    ;;
*)
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
