//! Recovery of a damaged write-ahead log: whatever the bytes of its segments, recovery never
//! panics, returns records in strictly increasing order, never reuses a sequence number,
//! keeps every cut byte in its quarantine, and is idempotent (a second recovery finds the
//! same records and nothing more to cut).
#![no_main]

use auditlake_ingest::wal;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // tmpfs when there is one: recovery fsyncs, which would make the fuzzer crawl.
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    // The first byte splits the rest into two segments (exercising damage at a segment's
    // end that is not the log's end).
    let (split, rest) = match data.split_first() {
        Some((s, r)) => ((*s as usize * r.len()) / 256, r),
        None => (0, data),
    };
    let (one, two) = rest.split_at(split);
    std::fs::write(dir.path().join("00000000000000000001.wal"), one).unwrap();
    if !two.is_empty() {
        std::fs::write(dir.path().join("00000000000000000002.wal"), two).unwrap();
    }
    let mut seen = Vec::new();
    let Ok(first) = wal::recover(dir.path(), |r| seen.push(r.seq)) else {
        return;
    };
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert!(seen.last().is_none_or(|&last| first.next_seq > last));
    let cut: u64 = first.cut.iter().map(|c| c.len).sum();
    let kept: u64 = wal::pending_cuts(dir.path())
        .unwrap()
        .iter()
        .map(|p| p.bytes.len() as u64)
        .sum();
    assert_eq!(cut, kept, "every cut byte is kept");
    let mut again = Vec::new();
    let second = wal::recover(dir.path(), |r| again.push(r.seq)).unwrap();
    assert_eq!(again, seen, "recovery is idempotent");
    assert!(second.cut.is_empty(), "{:?}", second.cut);
    assert_eq!(second.next_seq, first.next_seq);
});
