#!/usr/bin/env bash
# End-to-end ingest harness: times `auditlake ingest` of a generated NDJSON file into Parquet
# beside DuckDB doing COPY (SELECT * FROM read_json(file)) TO parquet (zstd) on the same file,
# with the same 2 threads, in the same run. Prints both throughputs, the ratio and the sizes.
#
#   benches/e2e.sh [EVENTS]        (default 380000 events, ~340 MB)
#
# Needs: python3 with duckdb (`pip install duckdb`), /usr/bin/time.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-380000}
WORK=${E2E_WORK:-$(mktemp -d /tmp/auditlake-e2e.XXXXXX)}
mkdir -p "$WORK"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/auditlake-target}"
PROFILE=ingest-bench
cargo build --quiet --profile "$PROFILE" --bin auditlake
BIN="$CARGO_TARGET_DIR/$PROFILE/auditlake"
python3 -c 'import duckdb' 2>/dev/null || pip install --quiet duckdb

INPUT="$WORK/audit.ndjson"
[ -s "$INPUT" ] || "$BIN" generate --events "$EVENTS" --seed 7 --output "$INPUT"
BYTES=$(stat -c %s "$INPUT")
# Warm the page cache for both contenders alike.
cat "$INPUT" > /dev/null

run_auditlake() {
  rm -rf "$WORK/archive"
  /usr/bin/time -f "%e %M" -o "$WORK/al.time" \
    "$BIN" --log warn --archive "$WORK/archive" ingest --cluster bench "$INPUT" 2>"$WORK/al.log"
}
run_duckdb() {
  rm -f "$WORK/duck.parquet"
  /usr/bin/time -f "%e %M" -o "$WORK/duck.time" python3 - "$INPUT" "$WORK/duck.parquet" <<'PY'
import sys, duckdb
con = duckdb.connect()
con.execute("SET threads TO 2")
con.execute(f"COPY (SELECT * FROM read_json('{sys.argv[1]}')) TO '{sys.argv[2]}' (FORMAT parquet, COMPRESSION zstd)")
PY
}

printf '%-10s %8s %10s %12s %10s %12s\n' run "secs" "MB/s" "k events/s" "peak MB" "output MB"
for round in 1 2; do
  run_auditlake
  read -r al_s al_kb < "$WORK/al.time"
  al_out=$(du -sb "$WORK/archive/events" | cut -f1)
  run_duckdb
  read -r dk_s dk_kb < "$WORK/duck.time"
  dk_out=$(stat -c %s "$WORK/duck.parquet")
  for who in auditlake duckdb; do
    if [ $who = auditlake ]; then s=$al_s; kb=$al_kb; out=$al_out; else s=$dk_s; kb=$dk_kb; out=$dk_out; fi
    awk -v w="$who#$round" -v s="$s" -v b="$BYTES" -v e="$EVENTS" -v kb="$kb" -v o="$out" \
      'BEGIN { printf "%-10s %8.2f %10.1f %12.1f %10.0f %12.1f\n", w, s, b/1e6/s, e/1e3/s, kb/1024, o/1e6 }'
  done
  awk -v a="$al_s" -v d="$dk_s" -v r="$round" 'BEGIN { printf "round %d: auditlake / duckdb throughput = %.2fx\n", r, d/a }'
done
echo "input: $EVENTS events, $(awk -v b="$BYTES" 'BEGIN{printf "%.1f", b/1e6}') MB; work dir $WORK"
