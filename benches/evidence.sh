#!/usr/bin/env bash
# What evidence costs, each figure beside its peer in the same run:
#   1. `auditlake ingest` of the generated traffic with and without --signing-key (row
#      hashing, tiles, signed checkpoints), alternated, 3 rounds;
#   2. `auditlake verify` (every file re-read and hashed, records, tiles, signatures) beside
#      `sha256sum` over the same files, alternated, 3 rounds;
#   3. `auditlake prove --audit-id` on an archive of PROVE_EVENTS events (first, middle and
#      last event of the input).
#
#   benches/evidence.sh [EVENTS] [PROVE_EVENTS]   (defaults 380000 and 10000000)
#
# Needs /usr/bin/time and ~12 GB of free disk for the large archive's input.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-380000}
PROVE_EVENTS=${2:-10000000}
WORK=${EVIDENCE_WORK:-$(mktemp -d /tmp/auditlake-evidence.XXXXXX)}
mkdir -p "$WORK"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/auditlake-target}"
PROFILE=ingest-bench
cargo build --quiet --profile "$PROFILE" --bin auditlake
BIN="$CARGO_TARGET_DIR/$PROFILE/auditlake"
KEY="$WORK/log.key"
[ -s "$KEY" ] || "$BIN" keys generate --out "$KEY" --name bench.example/log >/dev/null 2>&1

INPUT="$WORK/audit.ndjson"
[ -s "$INPUT" ] || "$BIN" generate --events "$EVENTS" --seed 7 --output "$INPUT"
cat "$INPUT" > /dev/null

ingest() { # $1: archive dir, rest: extra flags
  local dir=$1; shift
  rm -rf "$dir"
  /usr/bin/time -f "%e %M" -o "$WORK/t" \
    "$BIN" --log warn --archive "$dir" ingest --cluster bench --findings none "$@" "$INPUT" 2>"$WORK/ingest.log"
  cat "$WORK/t"
}

echo "== ingest, $EVENTS events: without and with evidence"
printf '%-8s %10s %10s %12s\n' round "plain s" "signed s" "signed/plain"
for round in 1 2 3; do
  read -r plain_s _ < <(ingest "$WORK/plain")
  read -r signed_s _ < <(ingest "$WORK/signed" --signing-key "$KEY")
  awk -v r="$round" -v p="$plain_s" -v s="$signed_s" 'BEGIN { printf "%-8s %10.2f %10.2f %12.3f\n", r, p, s, s/p }'
done

# The large archive: proving and verifying at scale.
BIG_INPUT="$WORK/big.ndjson"
BIG="$WORK/big-archive"
IDS="$WORK/big-ids.txt"
if [ ! -s "$IDS" ]; then
  echo "== building a signed archive of $PROVE_EVENTS events"
  rm -rf "$BIG"
  "$BIN" generate --events "$PROVE_EVENTS" --seed 11 --output "$BIG_INPUT"
  /usr/bin/time -f "%e s, %M KB peak" "$BIN" --log warn --archive "$BIG" ingest --cluster bench \
    --findings none --signing-key "$KEY" "$BIG_INPUT"
  # The first, middle and last event's audit IDs, to prove.
  { head -1 "$BIG_INPUT"; sed -n "$((PROVE_EVENTS / 2))p" "$BIG_INPUT"; tail -1 "$BIG_INPUT"; } |
    python3 -c 'import json,sys; [print(json.loads(l)["auditID"]) for l in sys.stdin]' > "$IDS"
  rm -f "$BIG_INPUT"
fi

FILES="$WORK/files.txt"
(cd "$BIG" && for d in events findings rbac_history _quarantine; do if [ -d "$d" ]; then find "$d" -type f; fi; done | sort) > "$FILES"
MB=$(cd "$BIG" && xargs -a "$FILES" du -cb | tail -1 | awk '{ printf "%.1f", $1/1e6 }')
echo "== verify beside sha256sum: $(wc -l < "$FILES") files, $MB MB"
printf '%-8s %12s %12s %16s\n' round "sha256sum s" "verify s" "verify speed/sha"
for round in 1 2 3; do
  (cd "$BIG" && xargs -a "$FILES" cat > /dev/null)
  sha_s=$( { /usr/bin/time -f "%e" bash -c "cd '$BIG' && xargs -a '$FILES' sha256sum > /dev/null"; } 2>&1 | tail -1)
  ver_s=$( { /usr/bin/time -f "%e" "$BIN" --log warn --archive "$BIG" verify --public-key "$KEY.vkey" > "$WORK/verify.out"; } 2>&1 | tail -1)
  awk -v r="$round" -v a="$sha_s" -v b="$ver_s" 'BEGIN { printf "%-8s %12.2f %12.2f %16.2f\n", r, a, b, a/b }'
done
tail -1 "$WORK/verify.out"

echo "== prove on $PROVE_EVENTS events"
while read -r id; do
  /usr/bin/time -f "%e s, %M KB peak" "$BIN" --log warn --archive "$BIG" prove --audit-id "$id" \
    --out "$WORK/proof.json" 2>&1 | tail -1 | sed "s/^/$id: /"
  "$BIN" verify-proof "$WORK/proof.json" --public-key "$KEY.vkey" | head -1
done < "$IDS"
echo "work dir $WORK"
