//! The archive on a real local store: head discovery past a stale pointer, checkpoints that
//! agree with the chain, and a checkpoint that does not match being ignored.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use auditlake_archive::{AttestedFiles, CHECKPOINT_EVERY, CommitContents, Table};

mod common;
use common::{archive_at, one_file};

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

fn kafka_commit(i: u64, ranges: &[(i32, i64, i64)]) -> CommitContents {
    CommitContents {
        source: Some(auditlake_archive::SourceMark::Kafka {
            group: "g".into(),
            ranges: ranges
                .iter()
                .map(
                    |&(partition, from_offset, through_offset)| auditlake_archive::KafkaRange {
                        topic: "audit".into(),
                        partition,
                        from_offset,
                        through_offset,
                    },
                )
                .collect(),
        }),
        ..one_file(i)
    }
}

/// Two writers (two processes: each its own `Archive`) holding the same Kafka offsets: the
/// second commit of an offset is refused, whichever writer makes it, and ranges after the
/// archived ones go through.
#[tokio::test]
async fn an_offset_range_is_archived_by_one_record_only_across_writers() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (archive_at(dir.path()), archive_at(dir.path()));
    a.commit("a", &kafka_commit(1, &[(0, 0, 9), (1, 0, 4)]), None, false)
        .await
        .unwrap();
    // b has never read the chain: it still sees a's record before writing its own.
    let e = b
        .commit("b", &kafka_commit(2, &[(1, 5, 7), (0, 5, 12)]), None, false)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            auditlake_archive::ArchiveError::RangeArchived {
                partition: 0,
                from_offset: 5,
                archived_through: 9,
                ..
            }
        ),
        "{e}"
    );
    b.commit(
        "b",
        &kafka_commit(3, &[(1, 5, 7), (0, 10, 12)]),
        None,
        false,
    )
    .await
    .unwrap();
    // And a, whose cache is behind, sees b's record too.
    let e = a
        .commit("a", &kafka_commit(4, &[(1, 7, 8)]), None, false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("audit/1"), "{e}");
    let p = a.kafka_progress().await.unwrap();
    assert_eq!(p.through[&("audit".to_string(), 0)], 12);
    assert_eq!(p.through[&("audit".to_string(), 1)], 7);
    assert_eq!(
        a.records().await.unwrap().len(),
        2,
        "refused commits leave no record"
    );
}
