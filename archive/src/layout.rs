//! Where things live in an archive: the tables and their Hive partitions, file names, and
//! the directories of the quarantine and the manifest.

use auditlake_schema::timestamp::{civil_from_days, parse_rfc3339_micros};

/// An hour in microseconds, the unit of `events` partitions.
pub const HOUR_MICROS: i64 = 3_600_000_000;
/// A day in microseconds, the unit of the derived tables' partitions.
pub const DAY_MICROS: i64 = 24 * HOUR_MICROS;

/// Prefix under the archive root holding manifest records.
pub const MANIFEST_DIR: &str = "_manifest";
/// Prefix under the archive root holding quarantine files.
pub const QUARANTINE_DIR: &str = "_quarantine";
/// Partition columns of `findings` and `rbac_history`, in directory order.
pub const DERIVED_PARTITION_COLUMNS: [&str; 2] = ["cluster", "date"];
/// Partition columns of `events`, in directory order.
pub const EVENTS_PARTITION_COLUMNS: [&str; 3] = ["cluster", "date", "hour"];

/// A table of the archive: Parquet files under `<dir>/cluster=<c>/date=<d>[/hour=<h>]/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Every audit event, partitioned by cluster, date and hour of `request_received_at`.
    Events,
    /// Every finding the detectors emitted, by cluster and date.
    Findings,
    /// Every RBAC object version the drift detector rebuilt, by cluster and date.
    RbacHistory,
}

impl Table {
    /// All tables, in the order SQL registers them.
    pub const ALL: [Table; 3] = [Table::Events, Table::Findings, Table::RbacHistory];

    /// The table's name in SQL, in manifest records and as its directory.
    pub fn name(self) -> &'static str {
        match self {
            Table::Events => "events",
            Table::Findings => "findings",
            Table::RbacHistory => "rbac_history",
        }
    }

    /// The table named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The table a path relative to the archive root belongs to.
    pub fn of_path(relative: &str) -> Option<Self> {
        let (dir, _) = relative.split_once('/')?;
        Self::from_name(dir)
    }

    /// Its Hive partition columns, in directory order.
    pub fn partition_columns(self) -> &'static [&'static str] {
        match self {
            Table::Events => &EVENTS_PARTITION_COLUMNS,
            Table::Findings | Table::RbacHistory => &DERIVED_PARTITION_COLUMNS,
        }
    }
}

/// A complete Parquet file of an archive table, ready to be committed.
#[derive(Debug)]
pub struct FinishedFile {
    /// The table it belongs to.
    pub table: Table,
    /// Path relative to the archive root.
    pub relative_path: String,
    /// Cluster partition value.
    pub cluster: String,
    /// The file's bytes (shared, so a commit that is retried never copies them).
    pub bytes: bytes::Bytes,
    /// SHA-256 of `bytes`, taken as they were written (see [`crate::TableFileEncoder`]); the
    /// manifest records it.
    pub sha256: [u8; 32],
    /// Number of rows (events, findings, RBAC versions).
    pub rows: u64,
    /// Earliest row time (µs): `request_received_at` for events, the time of the finding or
    /// of the change for the others.
    pub min_micros: i64,
    /// Latest row time (µs).
    pub max_micros: i64,
    /// Root of the Merkle tree over its rows (events files of a signed archive).
    pub rows_root: Option<[u8; 32]>,
}

/// Percent-encodes a Hive partition value (cluster names are validated at the source to
/// letters, digits, `-`, `_`, `.`; anything else is encoded so a path is never broken).
pub fn escape_partition_value(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// Why `name` cannot be a cluster name, if it cannot: cluster names are Hive partition values
/// that analysts type in SQL, so letters, digits, `-`, `_` and `.` only.
pub fn cluster_name_error(name: &str) -> Option<String> {
    // `.` and `..` (or any name led by a dot) read as path steps to every tool that lists
    // the archive, so a name starts with a letter or digit.
    let ok = name.len() <= 253
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    (!ok).then(|| {
        format!(
            "cluster {name:?}: use 1 to 253 letters, digits, '-', '_' and '.' only, starting \
             with a letter or digit"
        )
    })
}

/// `YYYY-MM-DD` (UTC) of a time in microseconds.
pub fn date_of(micros: i64) -> String {
    let (y, m, d) = civil_from_days(micros.div_euclid(86_400_000_000));
    format!("{y:04}-{m:02}-{d:02}")
}

/// The `cluster=/date=/hour=` partition directory (relative to the events table) of the
/// hour `hour` (hours since the epoch).
pub fn events_partition_dir(cluster: &str, hour: i64) -> String {
    let (y, m, d) = civil_from_days(hour.div_euclid(24));
    format!(
        "cluster={}/date={y:04}-{m:02}-{d:02}/hour={:02}",
        escape_partition_value(cluster),
        hour.rem_euclid(24)
    )
}

/// The `cluster=/date=/hour=` partition directory (relative to the events table) of a row.
pub fn partition_of(cluster: &str, request_received_micros: i64) -> String {
    events_partition_dir(cluster, request_received_micros.div_euclid(3_600_000_000))
}

/// The value of the `key=` step of a Hive path (`cluster` in `events/cluster=c/...`).
pub fn partition_value<'a>(path: &'a str, key: &str) -> Option<&'a str> {
    path.split('/')
        .find_map(|seg| seg.strip_prefix(key)?.strip_prefix('='))
}

/// A table file's partition directory, cluster and the time span the partition covers
/// (µs, `[start, end)`), read from its Hive path.
pub fn partition_span(path: &str, table: Table) -> Option<(String, String, (i64, i64))> {
    let cluster = partition_value(path, "cluster")?.to_string();
    let date = partition_value(path, "date")?;
    let day = parse_rfc3339_micros(&format!("{date}T00:00:00Z"))?;
    let dir = path.rsplit_once('/')?.0.to_string();
    match table {
        Table::Events => {
            let hour: i64 = partition_value(path, "hour")?.parse().ok()?;
            let start = day + hour * HOUR_MICROS;
            Some((dir, cluster, (start, start + HOUR_MICROS)))
        }
        Table::Findings | Table::RbacHistory => Some((dir, cluster, (day, day + DAY_MICROS))),
    }
}

/// Path, relative to the archive root, of data file number `n` of writer `stem` in
/// `partition` (a partition directory) of `table`.
pub fn data_file_path(table: Table, partition: &str, stem: &str, n: u64) -> String {
    format!("{}/{partition}/part-{stem}-{n:06}.parquet", table.name())
}

/// A fresh name for the quarantine files of one commit of `writer_id` (decided once per
/// commit, so a retried commit writes the same files).
pub fn quarantine_stem(writer_id: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{writer_id}-{:06}", N.fetch_add(1, Ordering::Relaxed))
}

/// Path, relative to the archive root, of the quarantine file named `stem` for `cluster`:
/// a commit's quarantined inputs are filed under the cluster each was sent for.
pub fn quarantine_file(stem: &str, cluster: &str) -> String {
    format!(
        "{QUARANTINE_DIR}/cluster={}/{stem}.ndjson",
        escape_partition_value(cluster)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_paths_follow_request_time() {
        // 2026-11-01T03:12:00Z
        assert_eq!(
            partition_of("prod-eu", 1_793_502_720_000_000),
            "cluster=prod-eu/date=2026-11-01/hour=03"
        );
        assert_eq!(
            partition_of("a b/c", 0),
            "cluster=a%20b%2Fc/date=1970-01-01/hour=00"
        );
    }

    #[test]
    fn spans_come_from_the_partition_path() {
        let (dir, cluster, span) = partition_span(
            "events/cluster=prod/date=2026-01-02/hour=03/part-a-000001.parquet",
            Table::Events,
        )
        .unwrap();
        assert_eq!(dir, "events/cluster=prod/date=2026-01-02/hour=03");
        assert_eq!(cluster, "prod");
        let jan2 = parse_rfc3339_micros("2026-01-02T03:00:00Z").unwrap();
        assert_eq!(span, (jan2, jan2 + HOUR_MICROS));
        let (_, _, day) = partition_span(
            "findings/cluster=prod/date=2026-01-02/part-a.parquet",
            Table::Findings,
        )
        .unwrap();
        assert_eq!(day.1 - day.0, DAY_MICROS);
        assert_eq!(
            partition_value("_quarantine/cluster=dev/x.ndjson", "cluster"),
            Some("dev")
        );
    }

    #[test]
    fn dates_are_utc_days() {
        assert_eq!(date_of(0), "1970-01-01");
        assert_eq!(date_of(1_793_491_199_999_999), "2026-10-31");
        assert_eq!(date_of(1_793_491_200_000_000), "2026-11-01");
    }

    #[test]
    fn tables_are_found_from_paths() {
        assert_eq!(
            Table::of_path("events/cluster=a/x.parquet"),
            Some(Table::Events)
        );
        assert_eq!(
            Table::of_path("rbac_history/cluster=a/x.parquet"),
            Some(Table::RbacHistory)
        );
        assert_eq!(Table::of_path("eventsx/a"), None);
        assert_eq!(Table::of_path("_quarantine/a"), None);
    }

    #[test]
    fn cluster_names_are_partition_values_not_path_steps() {
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "é",
            &"x".repeat(254),
        ] {
            assert!(cluster_name_error(bad).is_some(), "{bad:?} accepted");
        }
        for good in [
            "prod-eu",
            "a",
            "0",
            "gke_project_europe-west1_prod",
            "eks.prod.v2",
        ] {
            assert_eq!(cluster_name_error(good), None, "{good:?} refused");
        }
    }
}
