//! The archive on a real local store: head discovery past a stale pointer, checkpoints that
//! agree with the chain, and a checkpoint that does not match being ignored.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use auditlake_archive::{
    Archive, ArchiveLocation, AttestedFiles, CHECKPOINT_EVERY, CommitContents, FinishedFile, Table,
    data_file_path, events_partition_dir,
};

fn archive_at(dir: &std::path::Path) -> Archive {
    Archive::open(ArchiveLocation::parse(dir.to_str().unwrap()).unwrap()).unwrap()
}

fn one_file(i: u64) -> CommitContents {
    CommitContents {
        files: vec![FinishedFile {
            table: Table::Events,
            relative_path: data_file_path(
                Table::Events,
                &events_partition_dir("c", 490_000 + i as i64),
                "t",
                i,
            ),
            cluster: "c".into(),
            bytes: bytes::Bytes::from(format!("file {i}")),
            rows: 1,
            min_micros: 0,
            max_micros: 0,
        }],
        ..Default::default()
    }
}

fn live_paths(a: &AttestedFiles) -> Vec<String> {
    a.files(Table::Events).map(|(p, _)| p.to_string()).collect()
}

#[tokio::test]
async fn checkpoints_agree_with_the_chain_and_a_wrong_one_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let archive = archive_at(dir.path());
    let n = CHECKPOINT_EVERY * 2 + 3;
    for i in 1..=n {
        archive
            .commit("t", &one_file(i), None, false)
            .await
            .unwrap();
    }
    let checkpoints = dir.path().join("_checkpoints");
    let mut names: Vec<_> = std::fs::read_dir(&checkpoints)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            format!("{:020}.json", CHECKPOINT_EVERY),
            format!("{:020}.json", 2 * CHECKPOINT_EVERY)
        ]
    );
    let loaded = AttestedFiles::load(&archive).await.unwrap();
    assert_eq!(loaded.records(), n);
    let paths = live_paths(&loaded);
    assert_eq!(paths.len() as u64, n);
    // The same set the whole chain gives.
    let mut from_chain: Vec<String> = archive
        .records()
        .await
        .unwrap()
        .into_iter()
        .flat_map(|(r, _)| r.files.into_iter().map(|f| f.path))
        .collect();
    from_chain.sort();
    assert_eq!(paths, from_chain);

    // A checkpoint that claims an extra file but no longer matches its record is ignored.
    let newest = checkpoints.join(format!("{:020}.json", 2 * CHECKPOINT_EVERY));
    let mut c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&newest).unwrap()).unwrap();
    c["record_sha256"] = "00".into();
    c["files"].as_array_mut().unwrap().push(serde_json::json!({
        "table": "events", "path": "events/cluster=c/planted.parquet", "sha256": "00",
        "bytes": 1, "committed_at": "2026-11-01T00:00:00.000000Z"
    }));
    std::fs::write(&newest, serde_json::to_vec(&c).unwrap()).unwrap();
    let loaded = AttestedFiles::load(&archive).await.unwrap();
    assert_eq!(live_paths(&loaded), from_chain);
    assert!(!loaded.names("events/cluster=c/planted.parquet"));
}

#[tokio::test]
async fn the_head_is_found_past_a_stale_or_missing_pointer() {
    let dir = tempfile::tempdir().unwrap();
    let archive = archive_at(dir.path());
    for i in 1..=5 {
        archive
            .commit("t", &one_file(i), None, false)
            .await
            .unwrap();
    }
    let head = dir.path().join("_manifest/HEAD");
    assert_eq!(
        std::fs::read_to_string(&head).unwrap().trim(),
        r#"{"sequence":5}"#
    );
    // A writer that died between its record and the pointer leaves it behind.
    std::fs::write(&head, r#"{"sequence":2}"#).unwrap();
    assert_eq!(
        archive.manifest_head().await.unwrap().unwrap().0.sequence,
        5
    );
    std::fs::remove_file(&head).unwrap();
    assert_eq!(
        archive.manifest_head().await.unwrap().unwrap().0.sequence,
        5
    );
    std::fs::write(&head, "garbage").unwrap();
    assert_eq!(
        archive.manifest_head().await.unwrap().unwrap().0.sequence,
        5
    );
    // The next commit chains after the true head and repairs the pointer.
    let r = archive
        .commit("t", &one_file(6), None, false)
        .await
        .unwrap();
    assert_eq!(r.record.sequence, 6);
    assert_eq!(
        std::fs::read_to_string(&head).unwrap().trim(),
        r#"{"sequence":6}"#
    );
}
