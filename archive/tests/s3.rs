//! The archive and its signed log on a real S3-compatible server (moto in server mode, which
//! `scripts/test.sh` starts): manifest records created once under racing writers (the
//! server's `If-None-Match: *`), `verify`'s verdicts on tampered objects, retention, and a
//! proxy in front of the server that fails or drops PUTs mid-commit.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use auditlake_archive::note::{KeyKind, Signer, Verifier};
use auditlake_archive::retention;
use auditlake_archive::tlog::{LogKeys, tile_path};
use auditlake_archive::verify::{Verdict, VerifyOptions, VerifyReport, verify};
use auditlake_archive::{Archive, ArchiveLocation};
use object_store::{ObjectStoreExt, PutPayload};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;
use common::{file_path, one_file, only};

/// The bucket the tests use (scripts/test.sh creates it).
const BUCKET: &str = "auditlake-test";
const HOUR: i64 = 3_600_000_000;

/// The S3 server's endpoint, from `AUDITLAKE_TEST_S3_ENDPOINT`.
fn endpoint() -> String {
    std::env::var("AUDITLAKE_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "these tests need an S3-compatible server: run scripts/test.sh (it starts moto), or \
             start one yourself (pip install 'moto[server]'; moto_server -p 5000; \
             curl -X PUT http://127.0.0.1:5000/{BUCKET}) and set \
             AUDITLAKE_TEST_S3_ENDPOINT=http://127.0.0.1:5000"
        )
    })
}

/// A fresh archive location on the server at `endpoint`, under its own prefix.
fn location(endpoint: &str, name: &str) -> ArchiveLocation {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!(
        "{name}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    ArchiveLocation::parse(&format!("s3://{BUCKET}/{prefix}"))
        .unwrap()
        .with_store_option("aws_endpoint", endpoint)
        .with_store_option("aws_allow_http", "true")
        .with_store_option("aws_access_key_id", "auditlake-test")
        .with_store_option("aws_secret_access_key", "auditlake-test")
        .with_store_option("aws_region", "us-east-1")
        // What an Object Lock bucket requires (deploy/s3-object-lock.md).
        .with_store_option("aws_checksum_algorithm", "SHA256")
}

fn log_key() -> Signer {
    Signer::generate("auditlake.test/s3", KeyKind::Log).unwrap()
}

/// `signer` again, for a second writer handle.
fn same_key(signer: &Signer) -> LogKeys {
    LogKeys::new(Signer::parse(&signer.encode()).unwrap()).unwrap()
}

fn trusting(key: &Verifier) -> VerifyOptions {
    VerifyOptions {
        trusted: vec![key.clone()],
        ..Default::default()
    }
}

fn clean(report: &VerifyReport) {
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_writers_chain_once_and_verify_names_each_tampered_object_on_s3() {
    let loc = location(&endpoint(), "race");
    let signer = log_key();
    let key = signer.verifier().clone();
    let a = Archive::open(loc.clone())
        .unwrap()
        .with_signing(same_key(&signer));
    let b = Archive::open(loc).unwrap().with_signing(same_key(&signer));
    // Two writers commit at once: every record is created if absent, so each sequence
    // number goes to one of them and the loser chains after the winner.
    tokio::join!(
        async {
            for i in 1..=15 {
                a.commit("a", &one_file(i), None, false).await.unwrap();
            }
        },
        async {
            for i in 101..=115 {
                b.commit("b", &one_file(i), None, false).await.unwrap();
            }
        }
    );
    let records = a.records().await.unwrap();
    assert_eq!(records.len(), 30);
    // They did race: the chain switches writers more than once.
    let switches = records
        .windows(2)
        .filter(|w| w[0].0.writer != w[1].0.writer)
        .count();
    assert!(
        switches >= 2,
        "the writers took turns only {switches} time(s)"
    );
    // The server refuses a second create of an existing record (If-None-Match: *), which
    // is what keeps racing writers from overwriting each other.
    let taken = a.path("_manifest/00000000000000000001.json");
    let again = a
        .store()
        .put_opts(
            &taken,
            PutPayload::from_static(b"{}"),
            object_store::PutMode::Create.into(),
        )
        .await;
    assert!(
        matches!(again, Err(object_store::Error::AlreadyExists { .. })),
        "{again:?}"
    );
    let mut named: Vec<String> = records
        .iter()
        .flat_map(|(r, _)| r.files.iter().map(|f| f.path.clone()))
        .collect();
    named.sort();
    named.dedup();
    assert_eq!(named.len(), 30, "each file in exactly one record");
    let report = verify(&a, &trusting(&key)).await.unwrap();
    clean(&report);
    assert_eq!((report.records, report.files_checked), (30, 30));

    // Tampering through the S3 API, one kind at a time, each undone before the next.
    let store = a.store();
    let target = file_path(3);
    let original = a.get_if_exists(&target).await.unwrap().unwrap();
    store.delete(&a.path(&target)).await.unwrap();
    let report = verify(&a, &trusting(&key)).await.unwrap();
    assert_eq!(only(&report), (Verdict::FileMissing, target.clone()));

    let mut flipped = original.to_vec();
    flipped[0] ^= 1;
    store
        .put(&a.path(&target), PutPayload::from(flipped))
        .await
        .unwrap();
    let report = verify(&a, &trusting(&key)).await.unwrap();
    assert_eq!(only(&report), (Verdict::FileAltered, target.clone()));
    store
        .put(&a.path(&target), PutPayload::from(original.clone()))
        .await
        .unwrap();
    clean(&verify(&a, &trusting(&key)).await.unwrap());

    let planted = file_path(999);
    store
        .put(&a.path(&planted), PutPayload::from_static(b"planted"))
        .await
        .unwrap();
    let report = verify(&a, &trusting(&key)).await.unwrap();
    assert_eq!(only(&report), (Verdict::Orphan, planted.clone()));
    store.delete(&a.path(&planted)).await.unwrap();

    let tile = tile_path(0, 0, 30);
    let tile_bytes = a
        .get_if_exists(&tile)
        .await
        .unwrap()
        .expect("the partial tile");
    store.delete(&a.path(&tile)).await.unwrap();
    let report = verify(&a, &trusting(&key)).await.unwrap();
    assert_eq!(only(&report), (Verdict::TileMissing, tile.clone()));
    store
        .put(&a.path(&tile), PutPayload::from(tile_bytes))
        .await
        .unwrap();
    clean(&verify(&a, &trusting(&key)).await.unwrap());

    // A checkpoint signed by another key under the log's name.
    let impostor = Signer::generate("auditlake.test/s3", KeyKind::Log).unwrap();
    let b2 = Archive::open(a.location().clone())
        .unwrap()
        .with_signing(LogKeys::new(impostor).unwrap());
    b2.commit("b", &one_file(200), None, false).await.unwrap();
    let report = verify(&a, &trusting(&key)).await.unwrap();
    assert_eq!(report.worst(), Some(Verdict::CheckpointSignature));
}

#[tokio::test]
async fn retention_on_s3_removes_under_a_signed_record_and_verify_says_so() {
    let signer = log_key();
    let key = signer.verifier().clone();
    let archive = Archive::open(location(&endpoint(), "retention"))
        .unwrap()
        .with_signing(same_key(&signer));
    for i in 1..=5 {
        archive
            .commit("w", &one_file(i), None, false)
            .await
            .unwrap();
    }
    // Files 1 and 2 are in hours that ended by the cutoff (file i is in hour 472222 + i).
    let plan = retention::plan(&archive, (472_222 + 3) * HOUR, Vec::new())
        .await
        .unwrap();
    let removed: Vec<&str> = plan.remove.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(removed, vec![file_path(1), file_path(2)]);
    retention::apply(&archive, "w", "keep test", &plan)
        .await
        .unwrap();
    for gone in [file_path(1), file_path(2)] {
        assert_eq!(archive.get_if_exists(&gone).await.unwrap(), None, "{gone}");
    }
    let report = verify(&archive, &trusting(&key)).await.unwrap();
    clean(&report);
    let mut by_retention: Vec<&str> = report.removed.iter().map(|r| r.path.as_str()).collect();
    by_retention.sort();
    assert_eq!(by_retention, vec![file_path(1), file_path(2)]);
    assert_eq!(report.files_checked, 3);
}

/// What the fault proxy did.
#[derive(Default)]
struct Faults {
    puts: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

/// A proxy in front of `upstream` that answers every `fail_every`th PUT with a 503 without
/// forwarding it, and forwards every `drop_every`th PUT but closes the connection instead
/// of passing the answer on (the PUT happened; the writer cannot know).
async fn fault_proxy(
    upstream: SocketAddr,
    fail_every: u64,
    drop_every: u64,
) -> (String, Arc<Faults>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let faults = Arc::new(Faults::default());
    let counts = faults.clone();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let counts = counts.clone();
            tokio::spawn(async move {
                let _ = relay_one(client, upstream, &counts, fail_every, drop_every).await;
            });
        }
    });
    (format!("http://{addr}"), faults)
}

/// Reads until `\r\n\r\n`; the head and whatever came after it.
async fn read_head(s: &mut TcpStream) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok(Some((buf, rest)));
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The head without its `Connection` header, with `Connection: close` instead (one request
/// per connection keeps the proxy simple).
fn closing(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut out: String = text
        .trim_end_matches("\r\n")
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

async fn relay_one(
    mut client: TcpStream,
    upstream: SocketAddr,
    faults: &Faults,
    fail_every: u64,
    drop_every: u64,
) -> std::io::Result<()> {
    let Some((head, mut body)) = read_head(&mut client).await? else {
        return Ok(());
    };
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(
        !text.contains("transfer-encoding: chunked"),
        "the proxy reads Content-Length bodies only"
    );
    let length: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while body.len() < length {
        let mut chunk = vec![0u8; length - body.len()];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let put = text.starts_with("put ") && length > 0;
    let n = if put {
        faults.puts.fetch_add(1, Ordering::SeqCst) + 1
    } else {
        0
    };
    if put && n % fail_every == 0 {
        faults.failed.fetch_add(1, Ordering::SeqCst);
        client
            .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await?;
        return Ok(());
    }
    let mut server = TcpStream::connect(upstream).await?;
    server.write_all(&closing(&head)).await?;
    server.write_all(&body).await?;
    let mut answer = Vec::new();
    server.read_to_end(&mut answer).await?;
    if put && n % drop_every == 0 {
        // The object is stored; the writer never hears so.
        faults.dropped.fetch_add(1, Ordering::SeqCst);
        return Ok(());
    }
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(answer.len(), |p| p + 4);
    client.write_all(&closing(&answer[..split])).await?;
    client.write_all(&answer[split..]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn puts_failed_or_dropped_mid_commit_leave_no_visible_half_and_no_broken_log() {
    let direct = endpoint();
    let upstream: SocketAddr = direct
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let (proxied, faults) = fault_proxy(upstream, 5, 7).await;
    let loc = location(&direct, "faults");
    let mut through_proxy = loc.clone();
    through_proxy
        .store_options
        .retain(|(k, _)| k != "aws_endpoint");
    let through_proxy = through_proxy.with_store_option("aws_endpoint", &proxied);
    let signer = log_key();
    let key = signer.verifier().clone();
    let writer = Archive::open(through_proxy)
        .unwrap()
        .with_signing(same_key(&signer));
    // The committer's way: a failed commit is retried as a retry, which finds its own
    // record if an earlier attempt got it in.
    let mut retried = 0;
    for i in 1..=40 {
        let mut attempt = 0;
        loop {
            match writer.commit("w", &one_file(i), None, attempt > 0).await {
                Ok(_) => break,
                Err(e) => {
                    attempt += 1;
                    retried += 1;
                    assert!(attempt < 20, "commit {i} kept failing: {e}");
                }
            }
        }
    }
    let faults = (
        faults.puts.load(Ordering::SeqCst),
        faults.failed.load(Ordering::SeqCst),
        faults.dropped.load(Ordering::SeqCst),
    );
    assert!(
        faults.1 >= 10 && faults.2 >= 5,
        "faults injected (puts, failed, dropped): {faults:?}"
    );

    // Read directly: one record per commit, each file named once, the log signed and whole.
    let reader = Archive::open(loc).unwrap();
    let records = reader.records().await.unwrap();
    let mut named: Vec<String> = records
        .iter()
        .flat_map(|(r, _)| r.files.iter().map(|f| f.path.clone()))
        .collect();
    assert_eq!(named.len(), 40, "{} records for 40 commits", records.len());
    named.sort();
    named.dedup();
    assert_eq!(named.len(), 40, "a file named by two records");
    assert_eq!(records.len(), 40);
    // A commit given up after its files were put leaves them unnamed: cleaned like at a
    // restart, after which verify finds every file as committed and nothing else.
    reader
        .clean_orphans(std::time::Duration::ZERO)
        .await
        .unwrap();
    let report = verify(&reader, &trusting(&key)).await.unwrap();
    clean(&report);
    assert_eq!((report.records, report.files_checked), (40, 40));
    eprintln!(
        "fault proxy: {} PUTs, {} failed with 503, {} answers dropped; {retried} commit retries",
        faults.0, faults.1, faults.2
    );
}
