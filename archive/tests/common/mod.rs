//! What the archive's test binaries share: an archive in a directory, and commits of one
//! small events file each.
#![allow(dead_code, clippy::unwrap_used)] // each binary uses part of it; tests panic to fail

use std::path::Path;

use sha2::{Digest, Sha256};

use auditlake_archive::{
    Archive, ArchiveLocation, CommitContents, FinishedFile, Table, data_file_path,
    events_partition_dir,
};

/// The archive in directory `dir` (created if missing), unsigned.
pub fn archive_at(dir: &Path) -> Archive {
    Archive::open(ArchiveLocation::parse(dir.to_str().unwrap()).unwrap()).unwrap()
}

/// Path of the `i`th test file: filed under hour 472222 + i since the epoch (2023-11-14
/// 22:00 UTC plus i hours), so file 1 is on 2023-11-14 and files 2.. on 2023-11-15 and on.
pub fn file_path(i: u64) -> String {
    data_file_path(
        Table::Events,
        &events_partition_dir("c", 472_222 + i as i64),
        "t",
        i,
    )
}

/// A commit of the `i`th test file (its bytes `file <i>`), cluster `c`.
pub fn one_file(i: u64) -> CommitContents {
    CommitContents {
        files: vec![FinishedFile {
            table: Table::Events,
            relative_path: file_path(i),
            cluster: "c".into(),
            bytes: bytes::Bytes::from(format!("file {i}")),
            sha256: Sha256::digest(format!("file {i}")).into(),
            rows: 1,
            min_micros: 0,
            max_micros: 0,
            rows_root: None,
        }],
        ..Default::default()
    }
}

/// The one problem of a verify report, or a panic listing them all.
pub fn only(
    report: &auditlake_archive::verify::VerifyReport,
) -> (auditlake_archive::verify::Verdict, String) {
    assert_eq!(
        report.problems.len(),
        1,
        "want one problem, got {:#?}",
        report.problems
    );
    let p = &report.problems[0];
    (p.verdict, p.object.clone())
}
