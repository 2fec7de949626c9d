#!/usr/bin/env bash
# Forensic SQL, side by side in one run: `auditlake query` as an analyst runs it (a whole
# process: start-up, manifest, plan, scan, print) and the DuckDB shell over the very same
# Parquet files (hive partitions cluster/date/hour), alternated, each query 5 times.
#
#   benches/query.sh [EVENTS]        (default 3,900,000 events, ~3.4 GB of NDJSON)
#
# Needs: python3 with the duckdb-cli wheel (`pip install duckdb-cli`); installs it if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-3900000}
WORK=${QUERY_WORK:-$(mktemp -d /tmp/auditlake-query.XXXXXX)}
mkdir -p "$WORK"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/auditlake-target}"
# A release build, as users run (the `ingest-bench` profile's opt-level 1 DataFusion crates
# measured within noise of it here: geometric mean 2.08x against 2.05x).
PROFILE=${PROFILE:-release}
BIN=${AUDITLAKE_BIN:-}
if [ -z "$BIN" ]; then
  cargo build --quiet --profile "$PROFILE" --bin auditlake
  BIN="$CARGO_TARGET_DIR/$PROFILE/auditlake"
fi
python3 -c 'import duckdb_cli' 2>/dev/null || pip install --quiet duckdb-cli
DUCK=$(python3 -c 'import duckdb_cli, os; print(os.path.join(os.path.dirname(duckdb_cli.__file__), "duckdb"))')

if [ ! -d "$WORK/archive/events" ]; then
  "$BIN" generate --events "$EVENTS" --seed 7 --output "$WORK/audit.ndjson"
  "$BIN" --log warn --archive "$WORK/archive" ingest --cluster bench --findings none "$WORK/audit.ndjson"
  rm -f "$WORK/audit.ndjson"
fi

python3 - "$BIN" "$DUCK" "$WORK/archive" <<'PY'
import statistics, subprocess, sys, time
bin_, duck, archive = sys.argv[1:4]
files = f"{archive}/events/*/*/*/*.parquet"
view = f"CREATE VIEW events AS SELECT * FROM read_parquet('{files}', hive_partitioning = true);"

def auditlake(sql):
    return subprocess.run([bin_, "--log", "warn", "--archive", archive, "query", "--format", "csv",
                           "--maxrows", "inf", "-c", sql], capture_output=True, text=True, check=True).stdout

def duckdb(sql):
    return subprocess.run([duck, "-csv", "-c", view + sql], capture_output=True, text=True, check=True).stdout

# Values to look up, taken from the data.
pick = lambda sql: auditlake(sql).splitlines()[1].split(",")[0]
audit_id = pick("SELECT audit_id FROM events WHERE verb = 'delete' ORDER BY audit_id LIMIT 1")
user = pick("SELECT user_username FROM events WHERE user_username LIKE 'system:serviceaccount:%' "
            "GROUP BY 1 ORDER BY count(*) LIMIT 1")
day = pick("SELECT date FROM events GROUP BY 1 ORDER BY 1 LIMIT 1")
rbac = "('roles','rolebindings','clusterroles','clusterrolebindings')"
writes = "('create','update','patch','delete')"
cases = [
    ("count by verb", "SELECT verb, count(*) AS n FROM events GROUP BY verb ORDER BY n DESC, verb", None),
    ("one user's actions", f"SELECT request_received_at, verb, resource, namespace, name FROM events "
                           f"WHERE user_username = '{user}' ORDER BY request_received_at, verb, name LIMIT 100", None),
    ("lookup by audit_id", f"SELECT audit_id, stage, verb, user_username, response_code FROM events "
                           f"WHERE audit_id = '{audit_id}' ORDER BY stage", None),
    ("RBAC changes in a day", f"SELECT user_username, verb, resource, name, count(*) AS n FROM events "
                              f"WHERE date = '{day}' AND resource IN {rbac} AND verb IN {writes} "
                              f"AND stage = 'ResponseComplete' GROUP BY 1, 2, 3, 4 ORDER BY n DESC, 1, 2, 3, 4 LIMIT 20", None),
    ("top 403 principals", "SELECT user_username, count(*) AS n FROM events WHERE response_code = 403 "
                           "GROUP BY 1 ORDER BY n DESC, 1 LIMIT 10", None),
    ("JSON body field", "SELECT json_get_str(request_object, 'roleRef', 'name') AS role, count(*) AS n FROM events "
                        "WHERE resource = 'clusterrolebindings' AND verb = 'create' GROUP BY 1 ORDER BY n DESC, 1",
                        "SELECT json_extract_string(request_object, '$.roleRef.name') AS role, count(*) AS n FROM events "
                        "WHERE resource = 'clusterrolebindings' AND verb = 'create' GROUP BY 1 ORDER BY n DESC, 1"),
]
print(f"{'query':24} {'auditlake s':>12} {'duckdb s':>10} {'ratio':>7}  rows")
ratios = []
for name, sql, duck_sql in cases:
    duck_sql = duck_sql or sql
    a_out, d_out = auditlake(sql), duckdb(duck_sql)
    a_rows, d_rows = len(a_out.splitlines()) - 1, len(d_out.splitlines()) - 1
    if a_rows != d_rows:
        print(f"  {name}: auditlake {a_rows} rows, duckdb {d_rows} rows", file=sys.stderr)
    ta, td = [], []
    for _ in range(5):
        t = time.perf_counter(); auditlake(sql); ta.append(time.perf_counter() - t)
        t = time.perf_counter(); duckdb(duck_sql); td.append(time.perf_counter() - t)
    a, d = statistics.median(ta), statistics.median(td)
    ratios.append(a / d)
    print(f"{name:24} {a:12.3f} {d:10.3f} {a/d:6.2f}x  {a_rows}")
print(f"geometric mean of the ratios: {statistics.geometric_mean(ratios):.2f}x (auditlake time / duckdb time)")
PY
echo "archive: $WORK/archive ($(du -sh "$WORK/archive/events" | cut -f1) of events Parquet)"
