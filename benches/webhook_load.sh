#!/usr/bin/env bash
# Load benchmark of `auditlake serve` (see benches/src/bin/webhook_load.rs): builds the server
# and the load driver with the `ingest-bench` profile, then runs, in one go, the offered loads
# the issue asks about (100k events/s, twice) and a closed loop that finds the ceiling.
#
#   benches/webhook_load.sh [extra webhook_load flags]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/auditlake-target}"
cargo build --quiet --profile ingest-bench --bin auditlake -p auditlake -p auditlake-benches --bin webhook_load
LOAD="$CARGO_TARGET_DIR/ingest-bench/webhook_load"
for run in 1 2; do
  echo "== paced at 100k events/s, run $run"
  "$LOAD" --clients 8 --seconds 30 --rate 100000 "$@"
done
echo "== closed loop (as fast as acknowledgements come back)"
"$LOAD" --clients 8 --seconds 60 "$@"
