//! Which write-ahead log record the archiver is working on, kept in a small file of the log
//! directory, so that a record that kills the process (out of memory, an abort) or keeps
//! failing in it is recognised, and set aside after [`MAX_FAILURES`] failures instead of
//! failing every restart forever.
//!
//! File `archiver-attempts` (32 bytes, rewritten in place, never fsynced: it must survive a
//! process crash, not a power cut): the record in progress and its attempt number, then the
//! suspect (the record that was in progress when the archiver last died) and its failures.
//! A record's attempt is written before work on it starts and cleared when it ends.
//! File `poison-records`: the sequence numbers set aside, one per line, so a restart that
//! reads already-archived records again (to rebuild the duplicate filter) skips them too.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::wal::WalError;

/// A record is set aside once the archiver failed on it this many times.
pub const MAX_FAILURES: u64 = 3;

const ATTEMPTS_FILE: &str = "archiver-attempts";
const POISON_FILE: &str = "poison-records";

/// What to do with the next record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Work on it (this is attempt `n`, from 1).
    Try(u64),
    /// It failed [`MAX_FAILURES`] times: set it aside.
    SetAside,
}

/// The attempts file of one log directory.
pub struct RecordAttempts {
    file: File,
    path: PathBuf,
    /// (seq, attempt) in progress; attempt 0 when none.
    current: (u64, u64),
    /// (seq, failures) of the record the archiver died on last.
    suspect: (u64, u64),
    poisoned: BTreeSet<u64>,
    poison_path: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl RecordAttempts {
    /// Opens (creating) the files in `dir`; a record that was in progress when the last
    /// process died becomes the suspect.
    pub fn open(dir: &Path) -> Result<Self, WalError> {
        let path = dir.join(ATTEMPTS_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut raw = Vec::new();
        file.read_to_end(&mut raw).map_err(io_err(&path))?;
        let word = |i: usize| {
            raw.get(i * 8..i * 8 + 8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes)
        };
        let (current, suspect) = ((word(0), word(1)), (word(2), word(3)));
        let poison_path = dir.join(POISON_FILE);
        let poisoned = match std::fs::read_to_string(&poison_path) {
            Ok(t) => t.lines().filter_map(|l| l.trim().parse().ok()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(io_err(&poison_path)(e)),
        };
        let mut me = Self {
            file,
            path,
            current: (0, 0),
            suspect,
            poisoned,
            poison_path,
        };
        if current.1 > 0 {
            tracing::warn!(
                record = current.0,
                attempt = current.1,
                "the last process stopped while archiving this write-ahead log record"
            );
            me.suspect = current;
        }
        me.store()?;
        Ok(me)
    }

    fn store(&mut self) -> Result<(), WalError> {
        let mut raw = [0u8; 32];
        for (i, w) in [
            self.current.0,
            self.current.1,
            self.suspect.0,
            self.suspect.1,
        ]
        .into_iter()
        .enumerate()
        {
            raw[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        self.file.write_all_at(&raw, 0).map_err(io_err(&self.path))
    }

    /// Before working on record `seq`: whether to try it, or to set it aside.
    pub fn begin(&mut self, seq: u64) -> Result<Attempt, WalError> {
        if self.poisoned.contains(&seq) {
            return Ok(Attempt::SetAside);
        }
        let failures = if self.suspect.0 == seq {
            self.suspect.1
        } else {
            0
        };
        if failures >= MAX_FAILURES {
            return Ok(Attempt::SetAside);
        }
        self.current = (seq, failures + 1);
        self.store()?;
        Ok(Attempt::Try(failures + 1))
    }

    /// Work on record `seq` ended (archived, or set aside).
    pub fn done(&mut self, seq: u64) -> Result<(), WalError> {
        self.current = (seq, 0);
        if self.suspect.0 <= seq {
            self.suspect = (0, 0);
        }
        self.store()
    }

    /// The archiver failed on the record in progress (an error or a panic in this process):
    /// it becomes the suspect, as if the process had died on it.
    pub fn failed(&mut self) -> Result<Option<u64>, WalError> {
        if self.current.1 == 0 {
            return Ok(None);
        }
        self.suspect = self.current;
        self.current.1 = 0;
        self.store()?;
        Ok(Some(self.suspect.0))
    }

    /// Records that `seq` was set aside (durably: it must never be decoded again).
    pub fn set_aside(&mut self, seq: u64) -> Result<(), WalError> {
        if self.poisoned.insert(seq) {
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.poison_path)
                .map_err(io_err(&self.poison_path))?;
            writeln!(f, "{seq}").map_err(io_err(&self.poison_path))?;
            f.sync_all().map_err(io_err(&self.poison_path))?;
        }
        self.done(seq)
    }

    /// How many failures `seq` has had so far (for the quarantine reason).
    pub fn failures(&self, seq: u64) -> u64 {
        if self.suspect.0 == seq {
            self.suspect.1
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_that_kills_the_process_three_times_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        // Three runs die while working on record 7 (replaying 5 and 6 first each time).
        for run in 1..=3 {
            let mut a = RecordAttempts::open(dir.path()).unwrap();
            for seq in 5..7 {
                assert_eq!(a.begin(seq).unwrap(), Attempt::Try(1));
                a.done(seq).unwrap();
            }
            assert_eq!(a.begin(7).unwrap(), Attempt::Try(run));
            drop(a); // the process dies here
        }
        let mut a = RecordAttempts::open(dir.path()).unwrap();
        assert_eq!(a.begin(5).unwrap(), Attempt::Try(1));
        a.done(5).unwrap();
        assert_eq!(a.begin(7).unwrap(), Attempt::SetAside);
        assert_eq!(a.failures(7), 3);
        a.set_aside(7).unwrap();
        assert_eq!(a.begin(8).unwrap(), Attempt::Try(1));
        a.done(8).unwrap();
        // Read again later (duplicate filter rebuild): still set aside, even after restarts.
        let mut a = RecordAttempts::open(dir.path()).unwrap();
        assert_eq!(a.begin(7).unwrap(), Attempt::SetAside);
    }

    #[test]
    fn a_clean_run_or_a_death_elsewhere_clears_the_suspicion() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = RecordAttempts::open(dir.path()).unwrap();
        assert_eq!(a.begin(3).unwrap(), Attempt::Try(1));
        assert_eq!(a.failed().unwrap(), Some(3), "a panic in-process");
        assert_eq!(a.begin(3).unwrap(), Attempt::Try(2));
        a.done(3).unwrap();
        assert_eq!(a.begin(4).unwrap(), Attempt::Try(1));
        drop(a); // dies on 4
        let mut a = RecordAttempts::open(dir.path()).unwrap();
        assert_eq!(
            a.begin(3).unwrap(),
            Attempt::Try(1),
            "3 is no longer suspect"
        );
        a.done(3).unwrap();
        assert_eq!(a.begin(4).unwrap(), Attempt::Try(2));
    }
}
