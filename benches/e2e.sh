#!/usr/bin/env bash
# End-to-end ingest harness: times `auditlake ingest` of a generated NDJSON file into Parquet
# beside DuckDB doing COPY (SELECT * FROM read_json(file)) TO parquet (zstd) on the same file,
# with the same 2 threads, in the same run. Prints both throughputs, the ratio and the sizes.
#
#   benches/e2e.sh [EVENTS]        (default 380000 events, ~340 MB)
#
# ROUNDS=N (default 3) alternates the contenders N times and prints the median ratio.
# BEFORE_BIN=path adds another auditlake build (say, the commit before a change) to every
# round, so a change is measured beside the same DuckDB runs: this machine is shared and
# DuckDB's own time moves by 30% between quiet and busy minutes.
# AUDITLAKE_BIN=path times that build instead of building one (PROFILE, default
# ingest-bench: release on the ingest path but linked without LTO; PROFILE=release builds
# what users run).
#
# Needs: python3 with duckdb (`pip install duckdb`), /usr/bin/time.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-380000}
WORK=${E2E_WORK:-$(mktemp -d /tmp/auditlake-e2e.XXXXXX)}
mkdir -p "$WORK"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/auditlake-target}"
PROFILE=${PROFILE:-ingest-bench}
BIN=${AUDITLAKE_BIN:-}
if [ -z "$BIN" ]; then
  cargo build --quiet --profile "$PROFILE" --bin auditlake
  BIN="$CARGO_TARGET_DIR/$PROFILE/auditlake"
fi
python3 -c 'import duckdb' 2>/dev/null || pip install --quiet duckdb

INPUT="$WORK/audit.ndjson"
[ -s "$INPUT" ] || "$BIN" generate --events "$EVENTS" --seed 7 --output "$INPUT"
BYTES=$(stat -c %s "$INPUT")
# Warm the page cache for both contenders alike.
cat "$INPUT" > /dev/null

run_auditlake() { # BIN TIMEFILE
  rm -rf "$WORK/archive"
  /usr/bin/time -f "%e %M" -o "$2" \
    "$1" --log warn --archive "$WORK/archive" ingest --cluster bench "$INPUT" 2>"$WORK/al.log" >/dev/null
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
row() { # NAME TIMEFILE OUTPUT_BYTES
  local s kb
  read -r s kb < "$2"
  awk -v w="$1" -v s="$s" -v b="$BYTES" -v e="$EVENTS" -v kb="$kb" -v o="$3" \
    'BEGIN { printf "%-10s %8.2f %10.1f %12.1f %10.0f %12.1f\n", w, s, b/1e6/s, e/1e3/s, kb/1024, o/1e6 }'
}
secs() { cut -d' ' -f1 "$1"; }
ratio() { # LABEL ROUND AUDITLAKE_TIMEFILE LIST
  awk -v a="$(secs "$3")" -v d="$(secs "$WORK/duck.time")" -v r="$2" -v l="$1" -v out="$4" \
    'BEGIN { printf "round %d: %s / duckdb throughput = %.2fx\n", r, l, d/a; printf "%f\n", d/a >> out }'
}
median() { sort -g "$1" | awk '{ v[NR] = $1 } END { if (NR) printf "%.2fx", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

printf '%-10s %8s %10s %12s %10s %12s\n' run "secs" "MB/s" "k events/s" "peak MB" "output MB"
: > "$WORK/ratios"
: > "$WORK/before_ratios"
for round in $(seq 1 "${ROUNDS:-3}"); do
  if [ -n "${BEFORE_BIN:-}" ]; then
    run_auditlake "$BEFORE_BIN" "$WORK/before.time"
    row "before#$round" "$WORK/before.time" "$(du -sb "$WORK/archive/events" | cut -f1)"
  fi
  run_auditlake "$BIN" "$WORK/al.time"
  row "auditlake#$round" "$WORK/al.time" "$(du -sb "$WORK/archive/events" | cut -f1)"
  run_duckdb
  row "duckdb#$round" "$WORK/duck.time" "$(stat -c %s "$WORK/duck.parquet")"
  ratio auditlake "$round" "$WORK/al.time" "$WORK/ratios"
  if [ -n "${BEFORE_BIN:-}" ]; then
    ratio before "$round" "$WORK/before.time" "$WORK/before_ratios"
  fi
done
echo "median auditlake / duckdb throughput: $(median "$WORK/ratios")"
if [ -n "${BEFORE_BIN:-}" ]; then
  echo "median before / duckdb throughput: $(median "$WORK/before_ratios")"
fi
echo "input: $EVENTS events, $(awk -v b="$BYTES" 'BEGIN{printf "%.1f", b/1e6}') MB; work dir $WORK"
