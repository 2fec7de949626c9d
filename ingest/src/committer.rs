//! The committer task of `auditlake serve`: commits what the archiver hands over, in order,
//! retrying a failed commit with backoff until it succeeds (the write-ahead log keeps every
//! event meanwhile), then trims the log.
//!
//! Before the first put of a commit it writes a commit intent to the log directory naming
//! the files it is about to put; if the process dies before the manifest record names them,
//! the next start deletes them ([`resolve_intent`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::apiserver_metrics::ApiserverMetrics;
use crate::archive_health::ArchiveHealth;
use crate::archiver::CommitUnit;
use crate::error::IngestError;
use crate::serve::ServeError;
use crate::serve_config::ServeConfig;
use crate::serve_metrics::ServeMetrics;
use auditlake_archive::{Archive, ArchiveError, BeforePut, SourceMark};

const INTENT_FILE: &str = "commit-intent.json";
/// First wait before a failed commit is tried again; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The files a commit is about to put, written to the WAL directory first.
#[derive(Debug, Serialize, Deserialize)]
struct CommitIntent {
    wal_through_seq: u64,
    paths: Vec<String>,
}

fn write_intent(dir: &Path, intent: &CommitIntent) -> Result<(), ArchiveError> {
    use std::io::Write;
    let path = dir.join(INTENT_FILE);
    let tmp = dir.join(format!("{INTENT_FILE}.tmp"));
    let io = |source| ArchiveError::Fsync {
        path: path.clone(),
        source,
    };
    let body = serde_json::to_vec(intent).map_err(|e| io(std::io::Error::other(e)))?;
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&body).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

/// Deletes what an interrupted commit put, if its manifest record never got written.
pub(crate) async fn resolve_intent(
    archive: &Archive,
    dir: &Path,
    committed: u64,
) -> Result<(), ServeError> {
    let path = dir.join(INTENT_FILE);
    let file_err = |source| ServeError::File {
        path: path.clone(),
        source,
    };
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(file_err(e)),
    };
    match serde_json::from_slice::<CommitIntent>(&bytes) {
        Ok(intent) if intent.wal_through_seq > committed => {
            tracing::warn!(
                files = intent.paths.len(),
                through_seq = intent.wal_through_seq,
                "the last commit before the restart did not finish; deleting the files it put"
            );
            archive.delete_uncommitted(&intent.paths).await?;
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "unreadable commit intent ignored")
        }
    }
    std::fs::remove_file(&path).map_err(file_err)?;
    Ok(())
}

/// The error and its causes on one line (object store errors nest several).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let msg = c.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cause = c.source();
    }
    out
}

/// Unix time in seconds, for the gauges.
fn unix_seconds() -> i64 {
    crate::pipeline::now_micros() / 1_000_000
}

/// What the committer does between commits and how long it keeps trying at shutdown.
pub(crate) struct Committer {
    pub archive: Archive,
    /// Told when a commit is durable (see [`crate::sources::Durable`]).
    pub durable: Option<Arc<dyn crate::sources::Durable>>,
    /// Where the webhook keeps its own record of a commit in flight (resolved exactly at
    /// restart); the archive's intent covers every source.
    pub wal_dir: Option<PathBuf>,
    /// A commit failing this many times in a row is given up (`ingest`: the run fails);
    /// `None` retries until shutdown (`serve`: the log keeps every event meanwhile).
    pub max_attempts: Option<u64>,
    pub writer_id: String,
    pub metrics: Arc<ServeMetrics>,
    pub health: Arc<ArchiveHealth>,
    /// Committing through this record ends the replay: the server becomes ready.
    pub replay_target: u64,
    /// Set at shutdown to the time after which a failing commit is given up.
    pub give_up_at: watch::Receiver<Option<tokio::time::Instant>>,
    /// Write a heartbeat record every interval, busy or idle (`serve`); `None` for a finite
    /// source (`ingest`).
    pub heartbeat: Option<Heartbeats>,
}

/// The heartbeat settings and state of a committer.
pub(crate) struct Heartbeats {
    /// Time between heartbeats.
    pub every: Duration,
    /// The source's mark as of the last commit (a heartbeat repeats it, without new ranges).
    pub mark: Option<SourceMark>,
    /// Clusters the source serves.
    pub clusters: std::collections::BTreeSet<String>,
    /// The apiserver whose audit counters each heartbeat records.
    pub apiserver: Option<ApiserverMetrics>,
}

impl Heartbeats {
    /// Heartbeats as `serve`'s configuration asks (`None` when `heartbeat_interval_seconds`
    /// is 0) for a source whose position is `mark`.
    pub(crate) fn for_config(config: &ServeConfig, mark: SourceMark) -> Option<Self> {
        let every = Duration::from_secs(config.heartbeat_interval_seconds);
        let apiserver = ApiserverMetrics::from_config(config).unwrap_or_else(|e| {
            // validate() built it at start; only a CA file gone since then lands here.
            tracing::warn!(error = %e, "apiserver metrics not scraped");
            None
        });
        (!every.is_zero()).then(|| Heartbeats {
            every,
            mark: Some(mark),
            clusters: [config.cluster.clone()].into(),
            apiserver,
        })
    }

    fn saw(&mut self, contents: &auditlake_archive::CommitContents) {
        if let Some(mark) = &contents.source {
            // The position, not what the commit added: a heartbeat archives nothing.
            self.mark = Some(mark.position());
        }
        for f in &contents.files {
            // Checked first: the cluster is cloned only the first time it is seen.
            if !self.clusters.contains(&f.cluster) {
                self.clusters.insert(f.cluster.clone());
            }
        }
    }
}

/// What a committer run did.
#[derive(Debug, Default)]
pub(crate) struct Committed {
    pub through_seq: u64,
    pub commits: u64,
    pub events: u64,
    /// Data files committed (every table).
    pub files: u64,
    /// Bytes of the data files committed.
    pub bytes: u64,
    /// Set when it gave up at shutdown with units not committed.
    pub abandoned: Option<String>,
    /// The last unit was refused because another writer archived its Kafka offsets.
    pub conflict: bool,
}

impl Committer {
    /// Commits every unit received until the archiver drops its sender.
    pub(crate) async fn run(mut self, mut units: mpsc::Receiver<CommitUnit>) -> Committed {
        let mut done = Committed::default();
        // Busy or idle: a heartbeat is due every interval (commits do not postpone it), so
        // each records the apiserver's counters and the log shows the source up at a steady
        // pace.
        let every = self.heartbeat.as_ref().map(|h| h.every);
        let mut next_beat = every.map(|e| tokio::time::Instant::now() + e);
        loop {
            let received = match next_beat {
                Some(at) => match tokio::time::timeout_at(at, units.recv()).await {
                    Ok(unit) => unit,
                    Err(_) => {
                        self.beat().await;
                        next_beat = every.map(|e| tokio::time::Instant::now() + e);
                        continue;
                    }
                },
                None => units.recv().await,
            };
            let Some(unit) = received else { break };
            if let Some(h) = &mut self.heartbeat {
                h.saw(&unit.contents);
            }
            if let Err(e) = self.commit_with_retry(&unit, &mut done).await {
                // Only at shutdown: the records stay in the log for the next start.
                units.close();
                let left = 1 + std::iter::from_fn(|| units.try_recv().ok()).count();
                let message = if done.conflict {
                    format!(
                        "{left} commit(s) dropped, to be read again from the manifest's offsets: {e}"
                    )
                } else {
                    format!(
                        "gave up committing at shutdown ({left} commit(s) not done; their records \
                         stay in the write-ahead log and are archived at the next start): {e}"
                    )
                };
                tracing::error!("{message}");
                done.abandoned = Some(message);
                break;
            }
        }
        done
    }

    /// Writes a heartbeat record: the source is up (and, with a metrics endpoint, what the
    /// apiserver counted). Not retried (the next one comes an interval later) and not a
    /// commit failure: a missing heartbeat is itself what a gap report shows.
    async fn beat(&mut self) {
        let Some(h) = &self.heartbeat else { return };
        let apiserver = match &h.apiserver {
            Some(scraper) => match scraper.scrape().await {
                Ok(counters) => Some(counters),
                Err(e) => {
                    // The report then shows this heartbeat without counters.
                    self.metrics.apiserver_scrape_failures.inc();
                    tracing::warn!(error = %e, "could not read the apiserver's audit counters");
                    None
                }
            },
            None => None,
        };
        let contents = auditlake_archive::CommitContents {
            source: h.mark.clone(),
            heartbeat: Some(auditlake_archive::Heartbeat {
                clusters: h.clusters.iter().cloned().collect(),
                apiserver,
            }),
            ..Default::default()
        };
        match self
            .archive
            .commit(&self.writer_id, &contents, None, false)
            .await
        {
            Ok(outcome) => {
                self.metrics.heartbeats.inc();
                tracing::debug!(
                    sequence = outcome.record.sequence,
                    "heartbeat: the source is up"
                );
            }
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "could not write a heartbeat record")
            }
        }
    }

    async fn commit_with_retry(
        &mut self,
        unit: &CommitUnit,
        done: &mut Committed,
    ) -> Result<(), String> {
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1u64.. {
            match self.commit_once(unit, done, attempt > 1).await {
                Ok(()) => {
                    if attempt > 1 {
                        tracing::info!(
                            attempt,
                            "commit succeeded after retries; archiving recovered"
                        );
                    }
                    self.health.commit_succeeded();
                    self.metrics.archiving_failing.set(0);
                    return Ok(());
                }
                Err(e) => {
                    let chain = error_chain(&e);
                    if let IngestError::Archive(ArchiveError::RangeArchived { .. }) = e {
                        // Retrying cannot help: another member archived these offsets. The
                        // archiver re-reads from the manifest instead.
                        self.metrics.kafka.range_conflicts.inc();
                        tracing::warn!(error = %chain, "commit refused: its Kafka offsets are archived already; re-reading from the manifest");
                        done.conflict = true;
                        return Err(chain);
                    }
                    self.metrics.commit_failures.inc();
                    self.metrics.archiving_failing.set(1);
                    self.metrics.last_commit_error_time.set(unix_seconds());
                    self.health.commit_failed(chain.clone());
                    let give_up_at = *self.give_up_at.borrow();
                    if give_up_at.is_some_and(|t| tokio::time::Instant::now() + backoff > t)
                        || self.max_attempts.is_some_and(|m| attempt >= m)
                    {
                        return Err(chain);
                    }
                    tracing::error!(error = %chain, attempt, wal_through_seq = unit.through_seq,
                        retry_in_seconds = backoff.as_secs(),
                        "commit failed; retrying (the write-ahead log keeps every event meanwhile)");
                    let mut give_up = self.give_up_at.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        // Shutdown: retry now rather than after a long backoff.
                        _ = give_up.changed() => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        unreachable!("the retry loop only ends by returning")
    }

    async fn commit_once(
        &mut self,
        unit: &CommitUnit,
        done: &mut Committed,
        retry: bool,
    ) -> Result<(), IngestError> {
        let through = unit.through_seq;
        let span = tracing::info_span!(
            "commit",
            files = unit.contents.files.len(),
            quarantined = unit.contents.quarantine.len(),
            wal_through_seq = through
        );
        let intent_dir = self.wal_dir.clone().unwrap_or_default();
        let hook = move |paths: &[String]| {
            let write = || {
                write_intent(
                    &intent_dir,
                    &CommitIntent {
                        wal_through_seq: through,
                        paths: paths.to_vec(),
                    },
                )
            };
            // Two fsyncs: tell the runtime this worker blocks, so the requests it would
            // serve move to another one meanwhile.
            if tokio::runtime::Handle::current().runtime_flavor()
                == tokio::runtime::RuntimeFlavor::MultiThread
            {
                tokio::task::block_in_place(write)
            } else {
                write()
            }
        };
        let outcome = self
            .archive
            .commit(
                &self.writer_id,
                &unit.contents,
                self.wal_dir.is_some().then_some(&hook as BeforePut<'_>),
                retry,
            )
            .instrument(span.clone())
            .await?;
        // From here on the commit is durable: what follows may fail without harm.
        if let Some(dir) = &self.wal_dir {
            let intent = dir.join(INTENT_FILE);
            match std::fs::remove_file(&intent) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::error!(path = %intent.display(), error = %e, "cannot remove the commit intent (the next start ignores it)")
                }
            }
        }
        for f in &unit.cleanup {
            if let Err(e) = std::fs::remove_file(f)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::error!(path = %f.display(), error = %e, "cannot remove a quarantined write-ahead log piece now in the archive");
            }
        }
        let rows = outcome.record.rows();
        self.metrics.commits.inc();
        self.metrics.events_committed.inc_by(rows);
        self.metrics
            .commit_seconds
            .observe(outcome.latency.as_secs_f64());
        self.metrics.last_commit_time.set(unix_seconds());
        done.commits += 1;
        done.events += rows;
        done.files += outcome.record.files.len() as u64;
        done.bytes += outcome.record.files.iter().map(|f| f.bytes).sum::<u64>();
        done.through_seq = through;
        auditlake_archive::failpoint("before-source-durable");
        // The source may now let go of what this commit covers (the webhook trims its log).
        // Blocking I/O: not on a worker the requests need.
        let freed = match (&unit.contents.source, &self.durable) {
            (Some(mark), Some(durable)) => {
                let (mark, durable) = (mark.clone(), durable.clone());
                match tokio::task::spawn_blocking(move || durable.durable(&mark)).await {
                    Ok(Ok(freed)) => freed,
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "the source could not let go of archived records; tried again after the next commit");
                        0
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the source's archived-records callback panicked");
                        0
                    }
                }
            }
            _ => 0,
        };
        if let Some(durable) = &self.durable
            && durable.wants_quarantine()
            && !unit.contents.quarantine.is_empty()
        {
            let (records, durable) = (unit.contents.quarantine.clone(), durable.clone());
            if let Err(e) = tokio::task::spawn_blocking(move || durable.quarantined(&records)).await
            {
                tracing::error!(error = %e, "the source's quarantine callback panicked");
            }
        }
        let _g = span.enter(); // no await below
        tracing::info!(
            sequence = outcome.record.sequence,
            files = outcome.record.files.len(),
            events = rows,
            quarantined = unit.contents.quarantine.len(),
            commit_latency_ms = outcome.latency.as_millis() as u64,
            wal_freed_bytes = freed,
            "committed"
        );
        if through >= self.replay_target && !self.health.replayed() {
            self.health.set_replayed();
            tracing::info!("write-ahead log replayed; ready");
        }
        Ok(())
    }
}
