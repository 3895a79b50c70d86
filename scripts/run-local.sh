#!/usr/bin/env bash
# Runs webhookd locally: installs RabbitMQ if missing, starts (or reuses) a private
# broker on 127.0.0.1:5698 whose data in .local/rabbitmq-5698 is kept between runs,
# builds webhookd in release mode and runs it with deploy/local/webhookd.toml.
# Extra arguments go to `webhookd serve`. WEBHOOKD_DATA_DIR defaults to .local/data.
# The broker keeps running afterwards; stop it with:
#   WEBHOOKD_RMQ_PORT=5698 scripts/rabbitmq.sh stop
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
RMQ="$REPO/scripts/rabbitmq.sh"
PORT=5698

if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

"$RMQ" install
# What README.md's "A first try" and the docs' examples use in a second terminal.
missing=()
for tool in curl jq python3; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
((${#missing[@]} == 0)) || "$REPO/scripts/apt-install.sh" "${missing[@]}"
url="$(WEBHOOKD_RMQ_PORT=$PORT WEBHOOKD_RMQ_DIR="$REPO/.local/rabbitmq-$PORT" "$RMQ" start | tail -n 1)"
[[ "$url" == amqp://* ]] || { echo "run-local.sh: broker start printed no AMQP URL" >&2; exit 1; }

cargo build --release --locked -p webhookd

export WEBHOOKD_AMQP_URL="$url"
export WEBHOOKD_DATA_DIR="${WEBHOOKD_DATA_DIR:-$REPO/.local/data}"
mkdir -p "$WEBHOOKD_DATA_DIR"
echo "run-local.sh: broker $url (stop: WEBHOOKD_RMQ_PORT=$PORT scripts/rabbitmq.sh stop), data $WEBHOOKD_DATA_DIR" >&2
echo "run-local.sh: its configuration: target/release/webhookd config show --running --api http://127.0.0.1:8080 --token <token with CanManageDeliveries>" >&2
exec "$REPO/target/release/webhookd" serve --config "$REPO/deploy/local/webhookd.toml" "$@"
