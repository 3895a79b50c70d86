#!/usr/bin/env bash
# Runs a private RabbitMQ broker for webhookd's tests and local runs, without systemd.
#
# Usage: rabbitmq.sh install|start|stop|status|url|node|pid|ctl ARGS...
#
#   install  install Debian's rabbitmq-server if it is missing (needs root, or sudo)
#   start    start the broker in the background and wait until it accepts connections;
#            does nothing if it already runs. The AMQP URL is the last line on stdout.
#   stop     shut the broker down (its data is kept); fine if it is not running. A frozen
#            VM (SIGSTOP) is sent SIGCONT first, so that it can shut down cleanly.
#   status   exit 0 if the broker runs and accepts connections, 1 if not (also 1 while
#            its VM is frozen by SIGSTOP)
#   url      print the AMQP URL
#   node     print the Erlang node name
#   pid      print the pid of the broker's Erlang VM (beam), for tests that SIGSTOP,
#            SIGCONT or SIGKILL it; exit 1 if it does not run
#   ctl      run `rabbitmqctl -n NODE ARGS...` as this broker's CLI (same HOME, cookie and
#            distribution settings), e.g. `rabbitmq.sh ctl cluster_status`
#
# Environment:
#   WEBHOOKD_RMQ_PORT       AMQP port on 127.0.0.1 (default 5699); the Erlang distribution
#                           port is this + 20000, the node name webhookd<port>@localhost
#   WEBHOOKD_RMQ_DIR        where everything of this broker lives: data, logs, pid file,
#                           config, Erlang cookie (default <repo>/.local/rabbitmq-<port>;
#                           give it when this script runs from a copy outside the repo)
#   WEBHOOKD_RMQ_MEMORY     memory high watermark, absolute (default 1GB)
#   WEBHOOKD_RMQ_TIMEOUT    seconds to wait for startup or shutdown (default 60)
#
# Settings for clustered nodes (scripts/rabbitmq-cluster.sh sets them; all optional):
#   WEBHOOKD_RMQ_COOKIE     the Erlang cookie ([A-Za-z0-9_-], up to 255 characters), written
#                           into the node's own <dir>/.erlang.cookie on start; the nodes of
#                           one cluster need the same. Unset: a random cookie is made once
#                           per dir and kept.
#   WEBHOOKD_RMQ_CLUSTER    1: add `cluster_partition_handling = pause_minority` to the
#                           generated rabbitmq.conf (3.10's default `ignore` leaves a healed
#                           partition split until a node restarts); 0 or unset: not
#   WEBHOOKD_RMQ_TICKTIME   Erlang's net_ticktime in seconds (1..3600; unset: Erlang's 60),
#                           given to the server and the CLI as `-kernel net_ticktime N`: a
#                           peer silent for N..1.25*N s (a frozen VM) counts as down. Read
#                           by `start`; a CLI call without it still works.
#
# Nothing in /etc/rabbitmq or /var/lib/rabbitmq is read or written. Progress goes to stderr.
set -euo pipefail

log() { printf 'rabbitmq.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

PORT="${WEBHOOKD_RMQ_PORT:-5699}"
if ! [[ "$PORT" =~ ^[0-9]+$ ]] || ((PORT < 1024 || PORT > 45535)); then
    die "WEBHOOKD_RMQ_PORT must be a number in 1024..45535 (got '$PORT')"
fi
DIST_PORT=$((PORT + 20000))
NODE="webhookd${PORT}@localhost"
URL="amqp://guest:guest@127.0.0.1:${PORT}/%2f"
TIMEOUT="${WEBHOOKD_RMQ_TIMEOUT:-60}"
MEMORY="${WEBHOOKD_RMQ_MEMORY:-1GB}"
COOKIE="${WEBHOOKD_RMQ_COOKIE:-}"
if [[ -n "$COOKIE" ]] && ! [[ "$COOKIE" =~ ^[A-Za-z0-9_-]{1,255}$ ]]; then
    die "WEBHOOKD_RMQ_COOKIE must be 1..255 characters of [A-Za-z0-9_-]"
fi
CLUSTER="${WEBHOOKD_RMQ_CLUSTER:-0}"
[[ "$CLUSTER" == 0 || "$CLUSTER" == 1 ]] || die "WEBHOOKD_RMQ_CLUSTER must be 0 or 1 (got '$CLUSTER')"
TICKTIME="${WEBHOOKD_RMQ_TICKTIME:-}"
if [[ -n "$TICKTIME" ]] && { ! [[ "$TICKTIME" =~ ^[0-9]+$ ]] || ((TICKTIME < 1 || TICKTIME > 3600)); }; then
    die "WEBHOOKD_RMQ_TICKTIME must be a number of seconds in 1..3600 (got '$TICKTIME')"
fi

if [[ -n "${WEBHOOKD_RMQ_DIR:-}" ]]; then
    DIR="$WEBHOOKD_RMQ_DIR"
else
    REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    DIR="$REPO/.local/rabbitmq-$PORT"
fi
[[ "$DIR" == /* ]] || DIR="$PWD/$DIR"

PID_FILE="$DIR/rabbitmq.pid"      # the Erlang VM's pid, written by RabbitMQ itself
WRAPPER_PID_FILE="$DIR/server.pid" # the rabbitmq-server shell (session leader) we started
STDOUT_LOG="$DIR/log/server-stdout.log"
AWAIT_LOG="$DIR/log/await-startup.log" # the last await_startup attempt

as_root() {
    if ((EUID == 0)); then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

# The real server scripts; the /usr/sbin wrappers would switch to the rabbitmq user.
find_sbin() {
    local d
    d="$(compgen -G '/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin' | sort -V | tail -n 1 || true)"
    [[ -n "$d" && -x "$d/rabbitmq-server" ]] || return 1
    printf '%s\n' "$d"
}

cmd_install() {
    if find_sbin >/dev/null; then
        log "rabbitmq-server is installed ($(find_sbin))"
        return 0
    fi
    log "installing rabbitmq-server"
    as_root apt-get update >&2
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends rabbitmq-server >&2
    find_sbin >/dev/null || die "rabbitmq-server installed but no server scripts found"
}

# Puts this broker's settings (and nothing inherited) into the environment of the
# RabbitMQ scripts, for the server and the CLI alike: they must share HOME (cookie).
setup_env() {
    local sbin v
    sbin="$(find_sbin)" || die "rabbitmq-server is not installed: run '$0 install'"
    for v in $(compgen -e); do
        case "$v" in RABBITMQ_* | CONF_ENV_FILE) unset "$v" ;; esac
    done
    export PATH="$sbin:$PATH"
    export HOME="$DIR"
    export ERL_EPMD_ADDRESS=127.0.0.1
    export RABBITMQ_NODENAME="$NODE"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT="$PORT"
    export RABBITMQ_DIST_PORT="$DIST_PORT"
    export RABBITMQ_MNESIA_BASE="$DIR/mnesia"
    export RABBITMQ_LOG_BASE="$DIR/log"
    export RABBITMQ_PID_FILE="$PID_FILE"
    export RABBITMQ_CONF_ENV_FILE="$DIR/rabbitmq-env.conf"
    export RABBITMQ_CONFIG_FILE="$DIR/rabbitmq.conf"
    export RABBITMQ_ADVANCED_CONFIG_FILE="$DIR/advanced.config"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/enabled_plugins"
    local erl_args="-kernel inet_dist_use_interface {127,0,0,1}"
    # The CLI ticks like the node: a CLI expecting ticks more often than the node sends
    # them would drop the connection during long commands.
    [[ -z "$TICKTIME" ]] || erl_args+=" -kernel net_ticktime $TICKTIME"
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="$erl_args"
    export RABBITMQ_CTL_ERL_ARGS="$erl_args"
}

ctl() { rabbitmqctl -n "$NODE" "$@"; }

# True if process $1 exists, is not a zombie, and its name starts with $2.
# (Zombies matter: pid 1 of some containers reaps orphans late or never.)
alive() {
    local pid="$1" prefix="$2" stat
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
    # Format: pid (comm) state ...; comm may hold spaces, so split at the last ')'.
    [[ "${stat##*) }" != Z* ]] || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$prefix"* ]]
}

# Prints the pid in pid file $1 if that process is alive and named $2*.
live_pid() {
    local pid
    [[ -s "$1" ]] || return 1
    pid="$(<"$1")"
    alive "$pid" "$2" || return 1
    printf '%s\n' "$pid"
}

# The Erlang VM of this node, if it runs.
vm_pid() { live_pid "$PID_FILE" beam; }

# The rabbitmq-server shell we started (it runs as long as its VM), if alive.
wrapper_pid() { live_pid "$WRAPPER_PID_FILE" rabbitmq-server; }

# True if process $1 is stopped by a signal (state T: SIGSTOP), i.e. frozen.
frozen() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    [[ "${stat##*) }" == T* ]]
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

is_running() { vm_pid >/dev/null && port_open "$PORT"; }

write_config() {
    mkdir -p "$DIR/mnesia" "$DIR/log"
    : >"$DIR/rabbitmq-env.conf"
    # Rewritten on every start so changes here take effect; data lives in mnesia/.
    cat >"$DIR/rabbitmq.conf" <<EOF
# Generated by scripts/rabbitmq.sh on every start; edits are lost.
# A small disk limit, and a fixed memory watermark rather than a share of RAM (which may
# be the host's, not the container's): test loads on small CI machines don't block publishers.
disk_free_limit.absolute = 50MB
vm_memory_high_watermark.absolute = $MEMORY
EOF
    if ((CLUSTER)); then
        cat >>"$DIR/rabbitmq.conf" <<EOF
# A cluster node (WEBHOOKD_RMQ_CLUSTER=1): a node that finds itself in a minority pauses
# until it sees the majority again, then rejoins; 3.10's default 'ignore' would leave a
# healed partition split.
cluster_partition_handling = pause_minority
EOF
    fi
    # As deploy/rabbitmq/advanced.config: a retry dead-lettered from a tier into the due queue
    # while the due queue's leader is away (a node frozen or lost) is sent again after 10 s
    # instead of 3.10's 180 s.
    cp "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/deploy/rabbitmq/advanced.config" "$DIR/advanced.config"
    [[ -f "$DIR/enabled_plugins" ]] || printf '[].\n' >"$DIR/enabled_plugins"
    # A cookie of our own, made before the server or the CLI could race to create one;
    # or the given one (the nodes of a cluster share it), rewritten only when it differs.
    if [[ -n "$COOKIE" ]]; then
        if [[ "$(cat "$DIR/.erlang.cookie" 2>/dev/null)" != "$COOKIE" ]]; then
            rm -f "$DIR/.erlang.cookie"
            (
                umask 077
                printf '%s' "$COOKIE" >"$DIR/.erlang.cookie"
            )
            chmod 400 "$DIR/.erlang.cookie"
        fi
    elif [[ ! -s "$DIR/.erlang.cookie" ]]; then
        (
            umask 077
            head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr 'a-f' 'A-F' >"$DIR/.erlang.cookie"
        )
        chmod 400 "$DIR/.erlang.cookie"
    fi
}

show_logs() {
    local f
    for f in "$STDOUT_LOG" "$AWAIT_LOG" "$DIR/log/$NODE.log"; do
        [[ -s "$f" ]] || continue
        log "---- last lines of $f"
        tail -n 30 "$f" >&2 || true
    done
}

# Waits until the node has booted and accepts connections, retrying await_startup
# (which fails at once while the node is not yet registered with epmd) until the
# deadline; gives up at once if neither the VM nor its rabbitmq-server shell is alive.
# $1, if given, is the pid just launched: it may not be named rabbitmq-server yet.
wait_ready() {
    local launched="${1:-}" deadline=$((SECONDS + TIMEOUT)) remaining
    while :; do
        if ! vm_pid >/dev/null && ! wrapper_pid >/dev/null \
            && ! { [[ -n "$launched" ]] && alive "$launched" ""; }; then
            show_logs
            die "rabbitmq-server exited during startup"
        fi
        remaining=$((deadline - SECONDS))
        if ((remaining <= 0)); then
            show_logs
            die "node $NODE did not start within ${TIMEOUT}s"
        fi
        if ctl -q await_startup --timeout "$remaining" >"$AWAIT_LOG" 2>&1 && port_open "$PORT"; then
            return 0
        fi
        sleep 0.5
    done
}

cmd_start() {
    local started=$SECONDS
    mkdir -p "$DIR"
    setup_env
    if vm_pid >/dev/null || wrapper_pid >/dev/null; then
        log "node $NODE already runs (or is starting); waiting until it is ready"
        mkdir -p "$DIR/log"
        wait_ready
        printf '%s\n' "$URL"
        return 0
    fi
    port_open "$PORT" && die "port $PORT on 127.0.0.1 is taken by another process"
    port_open "$DIST_PORT" && die "distribution port $DIST_PORT on 127.0.0.1 is taken by another process"

    write_config
    rm -f "$PID_FILE"
    log "starting $NODE on 127.0.0.1:$PORT (dir $DIR)"
    printf '\n==== %s start\n' "$(date '+%F %T')" >>"$STDOUT_LOG"
    # A new session, detached from our stdin/stdout/stderr: callers that capture our
    # output must not wait for the broker. $! is the rabbitmq-server shell (setsid does
    # not fork here, as a background job of a script is not a process group leader).
    setsid rabbitmq-server >>"$STDOUT_LOG" 2>&1 </dev/null &
    printf '%s\n' "$!" >"$WRAPPER_PID_FILE"
    wait_ready "$!"
    log "started $NODE in $((SECONDS - started))s"
    printf '%s\n' "$URL"
}

# Waits up to $2 seconds for process $1 to end.
wait_gone() {
    local pid="$1" deadline=$((SECONDS + $2))
    while alive "$pid" ""; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

cmd_stop() {
    local started vm wrapper
    started=$SECONDS
    if [[ ! -d "$DIR" ]]; then
        log "node $NODE is not running (no dir $DIR)"
        return 0
    fi
    setup_env
    vm="$(vm_pid || true)"
    wrapper="$(wrapper_pid || true)"
    if [[ -z "$vm" && -z "$wrapper" ]]; then
        log "node $NODE is not running"
        rm -f "$WRAPPER_PID_FILE"
        return 0
    fi
    if [[ -n "$vm" ]] && frozen "$vm"; then
        log "node $NODE is frozen (SIGSTOP); sending SIGCONT so that it can shut down"
        kill -CONT "$vm" 2>/dev/null || true
    fi
    log "stopping $NODE"
    if [[ -n "$vm" ]] && ctl -q shutdown --timeout "$TIMEOUT" >&2 && wait_gone "$vm" 10; then
        :
    else
        log "shutdown via rabbitmqctl failed; sending SIGTERM"
        [[ -n "$vm" ]] && kill -TERM "$vm" 2>/dev/null
        [[ -n "$wrapper" ]] && kill -TERM -- "-$wrapper" 2>/dev/null
        if ! { [[ -z "$vm" ]] || wait_gone "$vm" 20; }; then
            log "node still there; sending SIGKILL"
            kill -KILL "$vm" 2>/dev/null || true
            wait_gone "$vm" 5 || die "could not kill pid $vm"
        fi
    fi
    # The rabbitmq-server shell ends with its VM; reap stragglers of its session.
    if [[ -n "$wrapper" ]] && ! wait_gone "$wrapper" 5; then
        kill -KILL -- "-$wrapper" 2>/dev/null || true
    fi
    rm -f "$WRAPPER_PID_FILE"
    log "stopped $NODE in $((SECONDS - started))s"
}

cmd_status() {
    local vm
    if [[ -d "$DIR" ]]; then
        setup_env
        vm="$(vm_pid || true)"
        if [[ -n "$vm" ]] && frozen "$vm"; then
            log "node $NODE is frozen (its VM, pid $vm, is stopped by SIGSTOP)"
            return 1
        fi
        if is_running; then
            log "node $NODE is running: $URL"
            return 0
        fi
    fi
    log "node $NODE is not running"
    return 1
}

cmd_pid() {
    [[ -d "$DIR" ]] || die "node $NODE is not running (no dir $DIR)"
    vm_pid || die "node $NODE is not running"
}

# Runs rabbitmqctl against this node with the node's own HOME (cookie) and Erlang args.
cmd_ctl() {
    [[ -d "$DIR" ]] || die "node $NODE has no dir $DIR"
    setup_env
    ctl "$@"
}

case "${1:-}" in
install) cmd_install ;;
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
url) printf '%s\n' "$URL" ;;
node) printf '%s\n' "$NODE" ;;
pid) cmd_pid ;;
ctl)
    shift
    cmd_ctl "$@"
    ;;
*)
    printf 'usage: %s install|start|stop|status|url|node|pid|ctl ARGS...\n' "$0" >&2
    exit 2
    ;;
esac
