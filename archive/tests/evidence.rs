//! The signed log on a real local store: every commit is a leaf under a signed checkpoint,
//! and `verify` gives each kind of tampering its own verdict, naming the object.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::Path;

use auditlake_archive::note::{KeyKind, SignedNote, Signer, Verifier};
use auditlake_archive::tlog::{self, Checkpoint, LogKeys, TreeHead};
use auditlake_archive::verify::{Verdict, VerifyOptions, VerifyReport, verify};
use auditlake_archive::{CommitContents, RemovedFile};

mod common;
use common::{archive_at, file_path, one_file, only};

/// Commits in the shared archive: more than one full level-0 tile (256 leaves).
const COMMITS: u64 = 260;
/// The commit after which a checkpoint is kept as a pin.
const PINNED_AT: u64 = 100;

/// The log key, the witness key and the archive they signed, with the checkpoint seen
/// after [`PINNED_AT`] commits; built once and copied for every tampering.
struct Fixture {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    log_key: Verifier,
    witness_key: Verifier,
    pinned: String,
}

fn keys() -> (Signer, Signer) {
    (
        Signer::generate("auditlake.test/log", KeyKind::Log).unwrap(),
        Signer::generate("witness.test", KeyKind::Witness).unwrap(),
    )
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("archive");
    let (log, witness) = keys();
    let (log_key, witness_key) = (log.verifier().clone(), witness.verifier().clone());
    let mut signing = LogKeys::new(log).unwrap();
    signing.witnesses.push(witness);
    let archive = archive_at(&root).with_signing(signing);
    let mut pinned = String::new();
    for i in 1..=COMMITS {
        archive
            .commit("w", &one_file(i), None, false)
            .await
            .unwrap();
        if i == PINNED_AT {
            pinned = std::fs::read_to_string(root.join(tlog::CHECKPOINT_FILE)).unwrap();
        }
    }
    Fixture {
        _dir: dir,
        root,
        log_key,
        witness_key,
        pinned,
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Copies the fixture's archive, lets `tamper` change it, and verifies the copy.
async fn verify_tampered(
    f: &Fixture,
    opts: &VerifyOptions,
    tamper: impl FnOnce(&Path),
) -> VerifyReport {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy");
    copy_dir(&f.root, &copy);
    tamper(&copy);
    verify(&archive_at(&copy), opts).await.unwrap()
}

fn trusting(keys: &[&Verifier]) -> VerifyOptions {
    VerifyOptions {
        trusted: keys.iter().map(|k| (*k).clone()).collect(),
        ..Default::default()
    }
}

fn record(seq: u64) -> String {
    format!("_manifest/{seq:020}.json")
}

#[tokio::test]
async fn verify_names_each_kind_of_tampering_with_its_own_verdict() {
    let f = fixture().await;
    let both = trusting(&[&f.log_key, &f.witness_key]);

    // Untouched: every record signed, every file as committed.
    let clean = verify_tampered(&f, &both, |_| {}).await;
    assert!(clean.problems.is_empty(), "{:#?}", clean.problems);
    assert_eq!(clean.records, COMMITS);
    assert_eq!(clean.files_checked, COMMITS);
    assert_eq!(clean.checkpoint.as_ref().unwrap().head.size, COMMITS);
    assert_eq!(clean.signed_by, ["auditlake.test/log", "witness.test"]);

    let r = verify_tampered(&f, &both, |a| {
        std::fs::remove_file(a.join(file_path(7))).unwrap()
    })
    .await;
    assert_eq!(only(&r), (Verdict::FileMissing, file_path(7)));

    let r = verify_tampered(&f, &both, |a| {
        let p = a.join(file_path(8));
        let mut b = std::fs::read(&p).unwrap();
        b[0] ^= 1;
        std::fs::write(p, b).unwrap();
    })
    .await;
    assert_eq!(only(&r), (Verdict::FileAltered, file_path(8)));

    let stray = file_path(9).replace("part-", "part-stray-");
    let r = verify_tampered(&f, &both, |a| {
        std::fs::write(a.join(&stray), b"PAR1").unwrap()
    })
    .await;
    assert_eq!(only(&r), (Verdict::Orphan, stray));

    // A record edited (its file's size changed to hide a truncation).
    let r = verify_tampered(&f, &both, |a| {
        let p = a.join(record(5));
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(p, text.replace("\"bytes\": 6", "\"bytes\": 7")).unwrap();
    })
    .await;
    assert_eq!(r.worst(), Some(Verdict::RecordAltered));
    assert_eq!(r.problems[0].object, record(5));

    let r = verify_tampered(&f, &both, |a| {
        std::fs::remove_file(a.join(record(42))).unwrap()
    })
    .await;
    assert_eq!(r.worst(), Some(Verdict::RecordMissing));
    assert_eq!(r.problems[0].object, record(42));
    // Its file is named by no record any more.
    assert!(
        r.problems
            .iter()
            .any(|p| p.verdict == Verdict::Orphan && p.object == file_path(42))
    );

    let r = verify_tampered(&f, &both, |a| {
        std::fs::remove_file(a.join("_log/tile/0/000")).unwrap()
    })
    .await;
    assert_eq!(
        only(&r),
        (Verdict::TileMissing, "_log/tile/0/000".to_string())
    );

    let r = verify_tampered(&f, &both, |a| {
        std::fs::write(a.join("_log/tile/1/000.p/1"), [0u8; 32]).unwrap()
    })
    .await;
    assert_eq!(
        only(&r),
        (Verdict::TileAltered, "_log/tile/1/000.p/1".to_string())
    );

    // Someone with write access rewrites a record and recomputes the whole log under their
    // own key with the log's name: the signature does not verify.
    let impostor = Signer::generate("auditlake.test/log", KeyKind::Log).unwrap();
    let r = verify_tampered(&f, &both, |a| {
        let cp = std::fs::read_to_string(a.join(tlog::CHECKPOINT_FILE)).unwrap();
        let cp = Checkpoint::parse(&cp).unwrap();
        let forged = SignedNote::sign(&cp.head.text(), &[&impostor], 0);
        std::fs::write(a.join(tlog::CHECKPOINT_FILE), forged).unwrap();
    })
    .await;
    assert_eq!(
        only(&r),
        (
            Verdict::CheckpointSignature,
            tlog::CHECKPOINT_FILE.to_string()
        )
    );

    // The checkpoint's root changed to match some other history, its signature kept.
    let r = verify_tampered(&f, &both, |a| {
        let cp = std::fs::read_to_string(a.join(tlog::CHECKPOINT_FILE)).unwrap();
        let cp = Checkpoint::parse(&cp).unwrap();
        let wrong = TreeHead {
            root: [9u8; 32],
            ..cp.head
        };
        let note = cp.raw.replacen(&cp.note.text, &wrong.text(), 1);
        std::fs::write(a.join(tlog::CHECKPOINT_FILE), note).unwrap();
    })
    .await;
    assert_eq!(
        only(&r),
        (
            Verdict::CheckpointSignature,
            tlog::CHECKPOINT_FILE.to_string()
        )
    );

    // History rewritten by someone without the key: a record edited (its files untouched),
    // the log's tiles rebuilt from the edited records, the genuine checkpoint put back.
    // Neither the records nor the tiles give the signed root.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy");
    copy_dir(&f.root, &copy);
    let genuine = std::fs::read(copy.join(tlog::CHECKPOINT_FILE)).unwrap();
    let fifth = copy.join(record(5));
    let text = std::fs::read_to_string(&fifth).unwrap();
    std::fs::write(
        &fifth,
        text.replace("\"writer\": \"w\"", "\"writer\": \"x\""),
    )
    .unwrap();
    std::fs::remove_dir_all(copy.join("_log")).unwrap();
    let (intruder, _) = keys();
    let rebuilt = archive_at(&copy).with_signing(LogKeys::new(intruder).unwrap());
    assert_eq!(rebuilt.sync_log().await.unwrap().unwrap().size, COMMITS);
    std::fs::write(copy.join(tlog::CHECKPOINT_FILE), genuine).unwrap();
    let r = verify(&archive_at(&copy), &both).await.unwrap();
    assert_eq!(only(&r), (Verdict::RecordAltered, "_manifest".to_string()));

    // Truncated: the newest records and the checkpoint replaced by the old, genuinely
    // signed one. Alone it verifies (but leaves the newer files orphaned); against the
    // checkpoint pinned later it is inconsistent.
    let newer = std::fs::read_to_string(f.root.join(tlog::CHECKPOINT_FILE)).unwrap();
    let truncate = |a: &Path| {
        for seq in PINNED_AT + 1..=COMMITS {
            std::fs::remove_file(a.join(record(seq))).unwrap();
        }
        std::fs::write(a.join(tlog::CHECKPOINT_FILE), &f.pinned).unwrap();
        std::fs::remove_file(a.join("_manifest/HEAD")).unwrap();
    };
    let r = verify_tampered(&f, &both, truncate).await;
    assert_eq!(r.worst(), Some(Verdict::Orphan));
    let pinned_newer = VerifyOptions {
        pinned: Some(Checkpoint::parse(&newer).unwrap()),
        ..trusting(&[&f.log_key, &f.witness_key])
    };
    let r = verify_tampered(&f, &pinned_newer, truncate).await;
    assert_eq!(r.worst(), Some(Verdict::CheckpointInconsistent));

    // The checkpoint pinned earlier is extended by the current one.
    let pinned_older = VerifyOptions {
        pinned: Some(Checkpoint::parse(&f.pinned).unwrap()),
        ..trusting(&[&f.log_key, &f.witness_key])
    };
    let r = verify_tampered(&f, &pinned_older, |_| {}).await;
    assert!(r.problems.is_empty(), "{:#?}", r.problems);
}

#[tokio::test]
async fn k_of_n_signatures_sampling_retention_and_catching_up() {
    let f = fixture().await;
    // Two of three keys required: the log's and the witness's are on it.
    let (_, other_witness) = keys();
    let mut opts = trusting(&[&f.log_key, &f.witness_key, other_witness.verifier()]);
    opts.required = 2;
    let r = verify(&archive_at(&f.root), &opts).await.unwrap();
    assert!(r.problems.is_empty(), "{:#?}", r.problems);
    opts.required = 3;
    let r = verify(&archive_at(&f.root), &opts).await.unwrap();
    assert_eq!(
        only(&r),
        (
            Verdict::CheckpointSignature,
            tlog::CHECKPOINT_FILE.to_string()
        )
    );
    assert!(
        r.problems[0].detail.contains("2 of the 3"),
        "{}",
        r.problems[0].detail
    );

    // A sample is drawn from the checkpoint's root: the same root, the same files.
    let mut sample = trusting(&[&f.log_key]);
    sample.sample = Some(0.1);
    let a = verify(&archive_at(&f.root), &sample).await.unwrap();
    let b = verify(&archive_at(&f.root), &sample).await.unwrap();
    assert!(a.problems.is_empty(), "{:#?}", a.problems);
    assert_eq!(a.files_checked, b.files_checked);
    assert!(
        (10..=50).contains(&a.files_checked),
        "about 26 of 260 files: {}",
        a.files_checked
    );
    assert_eq!(a.files_checked + a.files_skipped, COMMITS);

    // A file removed by a record (retention) and deleted is reported as removed, not missing.
    let (log, _) = keys();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("a");
    // Three unsigned commits first: the signing writer catches the log up.
    let plain = archive_at(&root);
    for i in 1..=3 {
        plain.commit("w", &one_file(i), None, false).await.unwrap();
    }
    let log_key = log.verifier().clone();
    let signed = archive_at(&root).with_signing(LogKeys::new(log).unwrap());
    assert_eq!(signed.sync_log().await.unwrap().unwrap().size, 3);
    let gone = file_path(2);
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(
            std::fs::read(root.join(&gone)).unwrap(),
        ))
    };
    let retention = CommitContents {
        removed: vec![RemovedFile {
            path: gone.clone(),
            sha256: sha,
            reason: "retention".into(),
        }],
        ..Default::default()
    };
    signed.commit("w", &retention, None, false).await.unwrap();
    std::fs::remove_file(root.join(&gone)).unwrap();
    let r = verify(&archive_at(&root), &trusting(&[&log_key]))
        .await
        .unwrap();
    assert!(r.problems.is_empty(), "{:#?}", r.problems);
    assert_eq!(r.records, 4);
    assert_eq!(r.removed.len(), 1);
    assert_eq!(
        (r.removed[0].path.as_str(), r.removed[0].sequence),
        (gone.as_str(), 4)
    );
}

#[tokio::test]
async fn retention_removes_old_partitions_under_a_signed_record_and_a_hold_keeps_its_own() {
    use auditlake_archive::retention::{self, LegalHold};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("a");
    let (log, _) = keys();
    let log_key = log.verifier().clone();
    let archive = archive_at(&root).with_signing(LogKeys::new(log).unwrap());
    for i in 1..=8 {
        archive
            .commit("w", &one_file(i), None, false)
            .await
            .unwrap();
    }
    let pinned = std::fs::read_to_string(root.join(tlog::CHECKPOINT_FILE)).unwrap();
    // File i is filed under hour 472222 + i (2023-11-14 22:00 UTC + i hours): file 1 on
    // 2023-11-14, files 2.. on 2023-11-15. Cut before file 6's hour; hold 2023-11-14.
    let cutoff = (472_222 + 6) * 3_600_000_000i64;
    let hold = LegalHold::parse_spec("case-1:cluster=c,from=2023-11-14,to=2023-11-15").unwrap();
    let plan = retention::plan(&archive, cutoff, vec![hold]).await.unwrap();
    let removed: Vec<&str> = plan.remove.iter().map(|f| f.path.as_str()).collect();
    let want: Vec<String> = (2..=5).map(file_path).collect();
    assert_eq!(removed, want);
    assert_eq!(plan.held.len(), 1);
    assert_eq!(
        (plan.held[0].0.path.as_str(), plan.held[0].1.as_str()),
        (file_path(1).as_str(), "case-1")
    );

    let (record, deleted) = retention::apply(&archive, "ret", "keep 1d", &plan)
        .await
        .unwrap();
    assert_eq!(deleted, 4);
    assert_eq!(record.sequence, 9);
    let info = record.retention.as_ref().unwrap();
    assert_eq!((info.policy.as_str(), info.held_files), ("keep 1d", 1));
    assert_eq!(info.legal_holds, ["case-1"]);
    for i in 2..=5 {
        assert!(!root.join(file_path(i)).exists());
    }
    assert!(root.join(file_path(1)).exists() && root.join(file_path(6)).exists());

    // Verifies: removed files are reported as removed by record 9, and the log still
    // extends the checkpoint pinned before retention.
    let opts = VerifyOptions {
        pinned: Some(Checkpoint::parse(&pinned).unwrap()),
        ..trusting(&[&log_key])
    };
    let r = verify(&archive_at(&root), &opts).await.unwrap();
    assert!(r.problems.is_empty(), "{:#?}", r.problems);
    let gone: Vec<(&str, u64)> = r
        .removed
        .iter()
        .map(|x| (x.path.as_str(), x.sequence))
        .collect();
    assert_eq!(
        gone,
        want.iter().map(|p| (p.as_str(), 9)).collect::<Vec<_>>()
    );
    // A second run finds nothing more to remove but the held file.
    let again = retention::plan(&archive, cutoff, vec![]).await.unwrap();
    assert_eq!(again.remove.len(), 1, "without the hold, file 1 goes");
    // A marker object holds it too.
    std::fs::create_dir_all(root.join("_legal_hold")).unwrap();
    std::fs::write(
        root.join("_legal_hold/case-2.json"),
        r#"{"name": "case-2", "cluster": "c", "reason": "litigation"}"#,
    )
    .unwrap();
    let held = retention::plan(&archive, cutoff, vec![]).await.unwrap();
    assert!(held.remove.is_empty());
    assert_eq!(held.held[0].1, "case-2");
}

#[tokio::test]
async fn a_verifier_trusting_the_old_key_follows_a_rotation_and_not_a_planted_one() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("a");
    let old = Signer::generate("auditlake.test/old", KeyKind::Log).unwrap();
    let new = Signer::generate("auditlake.test/new", KeyKind::Log).unwrap();
    let (old_v, new_v) = (old.verifier().clone(), new.verifier().clone());
    let again = |s: &Signer| Signer::parse(&s.encode()).unwrap();
    let signed = archive_at(&root).with_signing(LogKeys::new(again(&old)).unwrap());
    for i in 1..=3 {
        signed.commit("w", &one_file(i), None, false).await.unwrap();
    }
    let seq = tlog::rotate_key(&archive_at(&root), "rot", again(&old), again(&new))
        .await
        .unwrap();
    assert_eq!(seq, 4);
    let signed = archive_at(&root).with_signing(LogKeys::new(again(&new)).unwrap());
    for i in 5..=6 {
        signed.commit("w", &one_file(i), None, false).await.unwrap();
    }
    let cp = std::fs::read_to_string(root.join(tlog::CHECKPOINT_FILE)).unwrap();
    assert!(
        !cp.contains("auditlake.test/old "),
        "after the rotation only the new key signs: {cp}"
    );
    assert!(
        cp.starts_with("auditlake.test/old\n6\n"),
        "the log keeps its origin: {cp}"
    );

    // Trusting only the old key: the rotation is followed, the checkpoint verifies.
    let r = verify(&archive_at(&root), &trusting(&[&old_v]))
        .await
        .unwrap();
    assert!(r.problems.is_empty(), "{:#?}", r.problems);
    assert_eq!(
        r.rotations,
        [(
            4,
            "auditlake.test/old".to_string(),
            "auditlake.test/new".to_string()
        )]
    );
    assert_eq!(r.signed_by, ["auditlake.test/new"]);
    // Trusting the new key alone works too.
    let r = verify(&archive_at(&root), &trusting(&[&new_v]))
        .await
        .unwrap();
    assert!(r.problems.is_empty(), "{:#?}", r.problems);

    // Someone with write access plants a rotation to their own key and re-signs the log
    // with it: the planted rotation is not signed by the old key, so it is not followed.
    let evil = Signer::generate("auditlake.test/evil", KeyKind::Log).unwrap();
    let planted = tempfile::tempdir().unwrap();
    let copy = planted.path().join("copy");
    copy_dir(&root, &copy);
    let rotation =
        std::fs::read_to_string(copy.join("_log/rotation/00000000000000000004")).unwrap();
    let rot = Checkpoint::parse(&rotation).unwrap();
    std::fs::write(
        copy.join("_log/rotation/00000000000000000004"),
        SignedNote::sign(&rot.head.text(), &[&evil], 0),
    )
    .unwrap();
    let latest = Checkpoint::parse(&cp).unwrap();
    std::fs::write(
        copy.join(tlog::CHECKPOINT_FILE),
        SignedNote::sign(&latest.head.text(), &[&evil], 0),
    )
    .unwrap();
    let r = verify(&archive_at(&copy), &trusting(&[&old_v]))
        .await
        .unwrap();
    assert_eq!(
        r.worst(),
        Some(Verdict::CheckpointSignature),
        "{:#?}",
        r.problems
    );
    assert!(r.rotations.is_empty());
}
