//! The archive: data files, quarantine and the manifest chain in one store, and the commit
//! protocol that makes files visible (intent, puts, create-if-absent manifest record, head
//! pointer).

use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::error::{ArchiveError, store_err};
use crate::kafka_progress::{KafkaProgress, ProgressCache};
use crate::layout::{FinishedFile, MANIFEST_DIR};
use crate::location::ArchiveLocation;
use crate::manifest::{ManifestFile, ManifestQuarantine, ManifestRecord, RemovedFile, SourceMark};
use crate::tlog::{LogKeys, LogWriter, TreeHead};
use auditlake_schema::Quarantined;

/// Name, under [`MANIFEST_DIR`], of the pointer to the newest record.
pub const HEAD_FILE: &str = "HEAD";
/// Prefix under the archive root holding commit intents (files put but not yet committed).
pub const INTENTS_DIR: &str = "_intents";

/// Parts of the quarantine file uploaded at a time (bounds its memory while streaming).
const QUARANTINE_PART_BYTES: usize = 8 << 20;
/// Manifest records read at once when a reader loads the chain.
const READ_CONCURRENCY: usize = 32;

/// What one commit makes visible: data files, quarantined inputs, files it takes out of
/// their tables, and how far its source is archived.
#[derive(Debug, Default)]
pub struct CommitContents {
    /// Finished Parquet files of every table.
    pub files: Vec<FinishedFile>,
    /// Inputs that could not be decoded; each is filed under its own cluster.
    pub quarantine: Vec<Quarantined>,
    /// Names the commit's quarantine files ([`crate::quarantine_stem`]), decided once so a
    /// retried commit puts the same files; `None` when there is no quarantine.
    pub quarantine_stem: Option<String>,
    /// Files of earlier commits this one removes from their tables.
    pub removed: Vec<RemovedFile>,
    /// The source position this commit covers.
    pub source: Option<SourceMark>,
    /// The policy of a retention record.
    pub retention: Option<crate::manifest::RetentionInfo>,
    /// A change of the log's signing key.
    pub key_rotation: Option<crate::manifest::KeyRotation>,
    /// A heartbeat (no files).
    pub heartbeat: Option<crate::manifest::Heartbeat>,
}

impl CommitContents {
    /// Writes what the commit says besides its files into `record`: the one list of those
    /// fields, so a retried commit recognises its own record by the same ones.
    fn stamp(&self, record: &mut ManifestRecord) {
        record.removed = self.removed.clone();
        record.source = self.source.clone();
        record.retention = self.retention.clone();
        record.key_rotation = self.key_rotation.clone();
        record.heartbeat = self.heartbeat.clone();
    }

    /// Whether `record` says what [`Self::stamp`] would write.
    fn stamped(&self, record: &ManifestRecord) -> bool {
        let mut expected = record.clone();
        self.stamp(&mut expected);
        expected == *record
    }
}

/// Called by [`Archive::commit`] with every path it is about to put, before the first put.
pub type BeforePut<'a> = &'a (dyn Fn(&[String]) -> Result<(), ArchiveError> + Sync);

/// The pointer to the newest record: a hint that makes finding the head O(1). Readers
/// check it by looking for the records after it, so a stale pointer only costs a read.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Head {
    sequence: u64,
}

/// Files a commit is about to put, recorded first so a writer that dies between the puts
/// and the manifest record leaves files that can be found and deleted.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Intent {
    writer: String,
    paths: Vec<String>,
}

/// The evidence archive: data files, quarantine and the manifest chain in one store.
#[derive(Debug, Clone)]
pub struct Archive {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    location: ArchiveLocation,
    /// The Kafka offsets the chain archives, read once and kept up to date.
    kafka: Arc<ProgressCache>,
    /// Extends the signed log after each record, when the archive has a signing key.
    log: Option<Arc<LogWriter>>,
}

/// What one commit wrote.
#[derive(Debug, Clone)]
pub struct CommitOutcome {
    /// The manifest record written.
    pub record: ManifestRecord,
    /// Time from the first put to the manifest being durable.
    pub latency: Duration,
}

impl Archive {
    /// Opens the archive at `location` to write, creating a local directory if needed.
    pub fn open(location: ArchiveLocation) -> Result<Self, ArchiveError> {
        let (store, prefix) = location.open_store(true)?;
        Ok(Self {
            store,
            prefix,
            location,
            kafka: Arc::default(),
            log: None,
        })
    }

    /// Signs the log over the manifest with `keys`: every commit becomes a leaf and gets a
    /// signed checkpoint (`archive/FORMAT.md` §7).
    pub fn with_signing(mut self, keys: LogKeys) -> Self {
        self.log = Some(LogWriter::new(keys));
        self
    }

    /// Whether commits are signed.
    pub fn signs(&self) -> bool {
        self.log.is_some()
    }

    /// The keys commits are signed with, if any.
    pub fn log_keys(&self) -> Option<&LogKeys> {
        self.log.as_deref().map(LogWriter::keys)
    }

    /// Extends the signed log to the newest record (a writer that starts on an archive whose
    /// log is behind its chain catches up before its first commit). `None` when unsigned.
    pub async fn sync_log(&self) -> Result<Option<TreeHead>, ArchiveError> {
        let Some(log) = &self.log else {
            return Ok(None);
        };
        let through = self.manifest_head().await?.map_or(0, |(r, _)| r.sequence);
        log.extend(self, through, None).await.map(Some)
    }

    /// Opens an existing archive to read: a location with no manifest record is an error
    /// naming it (a mistyped `--archive` must not answer every query with 0 rows).
    pub async fn open_existing(location: ArchiveLocation) -> Result<Self, ArchiveError> {
        let (store, prefix) = location.open_store(false)?;
        let archive = Self {
            store,
            prefix,
            location,
            kafka: Arc::default(),
            log: None,
        };
        if archive.manifest_head().await?.is_none() {
            return Err(ArchiveError::NotAnArchive {
                location: archive.location.url.to_string(),
            });
        }
        Ok(archive)
    }

    /// The object store holding the archive.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// The archive's location.
    pub fn location(&self) -> &ArchiveLocation {
        &self.location
    }

    /// The object path of `relative` under the archive root.
    pub fn path(&self, relative: &str) -> Path {
        let mut p = self.prefix.clone();
        for part in relative.split('/').filter(|s| !s.is_empty()) {
            p = p.clone().join(part);
        }
        p
    }

    /// `path` relative to the archive root (`None` when it is outside).
    pub fn relative(&self, path: &Path) -> Option<String> {
        let mut parts = path.prefix_match(&self.prefix)?;
        let mut out = String::new();
        for (i, p) in parts.by_ref().enumerate() {
            if i > 0 {
                out.push('/');
            }
            out.push_str(p.as_ref());
        }
        Some(out)
    }

    /// Every object under `dir` (relative to the root) with its bytes, in path order: the
    /// few small objects of a marker directory (legal holds, key rotations).
    pub async fn read_all_under(
        &self,
        dir: &str,
    ) -> Result<Vec<(String, bytes::Bytes)>, ArchiveError> {
        let mut metas: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&self.path(dir)))
            .try_collect()
            .await
            .map_err(store_err("list", dir))?;
        metas.sort_by(|a, b| a.location.cmp(&b.location));
        let mut out = Vec::with_capacity(metas.len());
        for m in metas {
            let rel = self.relative(&m.location).unwrap_or_default();
            let bytes = self
                .store
                .get(&m.location)
                .await
                .map_err(store_err("get", &rel))?
                .bytes()
                .await
                .map_err(store_err("get", &rel))?;
            out.push((rel, bytes));
        }
        Ok(out)
    }

    /// The bytes of the object at `relative`, `None` when it does not exist.
    pub async fn get_if_exists(
        &self,
        relative: &str,
    ) -> Result<Option<bytes::Bytes>, ArchiveError> {
        match self.store.get(&self.path(relative)).await {
            Ok(r) => r
                .bytes()
                .await
                .map(Some)
                .map_err(store_err("get", relative)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_err("get", relative)(e)),
        }
    }

    /// The bytes of manifest record `sequence`, `None` when it does not exist.
    pub async fn record_bytes(&self, sequence: u64) -> Result<Option<bytes::Bytes>, ArchiveError> {
        self.get_if_exists(&format!(
            "{MANIFEST_DIR}/{}",
            ManifestRecord::file_name(sequence)
        ))
        .await
    }

    /// Puts `bytes` at `relative` (fsynced on a local filesystem).
    pub(crate) async fn put_bytes(
        &self,
        relative: &str,
        bytes: bytes::Bytes,
        mode: PutMode,
    ) -> Result<(), ArchiveError> {
        self.put(relative, bytes, mode)
            .await
            .map_err(store_err("put", relative))
    }

    async fn put(
        &self,
        relative: &str,
        bytes: bytes::Bytes,
        mode: PutMode,
    ) -> Result<(), object_store::Error> {
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        self.store
            .put_opts(&self.path(relative), PutPayload::from(bytes), opts)
            .await?;
        self.fsync_local(relative)
            .await
            .map_err(|e| object_store::Error::Generic {
                store: "LocalFileSystem",
                source: Box::new(e),
            })
    }

    /// object_store 0.13's LocalFileSystem does not fsync: without this a committed file
    /// could vanish on power loss while its manifest record survives. Runs on tokio's
    /// blocking pool, so a slow disk never holds a worker that serves requests.
    async fn fsync_local(&self, relative: &str) -> std::io::Result<()> {
        let Some(dir) = &self.location.local_dir else {
            return Ok(());
        };
        let file = dir.join(relative);
        tokio::task::spawn_blocking(move || {
            std::fs::File::open(&file)?.sync_all()?;
            if let Some(parent) = file.parent() {
                sync_dir(parent)?;
            }
            Ok(())
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Puts one file a commit will name, whose SHA-256 its maker took, and returns the
    /// digest (hex) and size.
    async fn put_evidence(
        &self,
        relative: &str,
        body: bytes::Bytes,
        sha256: &[u8; 32],
    ) -> Result<(String, u64), ArchiveError> {
        debug_assert_eq!(
            Sha256::digest(&body)[..],
            sha256[..],
            "{relative}: the digest its maker took is not of its bytes"
        );
        let sha256 = hex::encode(sha256);
        let bytes = body.len() as u64;
        let span = tracing::debug_span!("put_file", path = %relative, bytes);
        self.put(relative, body, PutMode::Overwrite)
            .instrument(span)
            .await
            .map_err(store_err("put", relative))?;
        Ok((sha256, bytes))
    }

    /// Streams the quarantine file of a commit to the store record by record (a multipart
    /// upload once it is large), hashing as it goes; returns its SHA-256 and size.
    async fn put_quarantine(
        &self,
        relative: &str,
        records: &[&Quarantined],
    ) -> Result<(String, u64), ArchiveError> {
        use tokio::io::AsyncWriteExt;
        let path = self.path(relative);
        let io = |e: std::io::Error| ArchiveError::Store {
            operation: "put",
            path: relative.to_string(),
            source: object_store::Error::Generic {
                store: "quarantine",
                source: Box::new(e),
            },
        };
        let mut out = object_store::buffered::BufWriter::with_capacity(
            self.store.clone(),
            path,
            QUARANTINE_PART_BYTES,
        );
        let mut sha = Sha256::new();
        let mut bytes = 0u64;
        let mut line = Vec::new();
        for q in records {
            line.clear();
            crate::quarantine::quarantine_line(q, &mut line);
            sha.update(&line);
            bytes += line.len() as u64;
            if let Err(e) = out.write_all(&line).await {
                out.abort().await.ok();
                return Err(io(e));
            }
        }
        out.shutdown().await.map_err(io)?;
        self.fsync_local(relative)
            .await
            .map_err(|e| ArchiveError::Fsync {
                path: relative.into(),
                source: e,
            })?;
        Ok((hex::encode(sha.finalize()), bytes))
    }

    /// Commits finished data files and quarantined inputs: records an intent naming every
    /// path, puts every file, appends a manifest record naming them (with SHA-256, rows,
    /// time range) to the hash chain, moves the head pointer and drops the intent. Nothing a
    /// commit wrote is referenced until its manifest record exists.
    ///
    /// Safe to call again with the same `contents` after a failure (`retry`): the files are
    /// put again under the same names, and a manifest record that the failed attempt did
    /// write (its answer lost) is found and returned instead of being written twice.
    pub async fn commit(
        &self,
        writer_id: &str,
        contents: &CommitContents,
        before_put: Option<BeforePut<'_>>,
        retry: bool,
    ) -> Result<CommitOutcome, ArchiveError> {
        let started = Instant::now();
        // One quarantine file per cluster, in a stable order.
        let mut by_cluster: std::collections::BTreeMap<&str, Vec<&Quarantined>> =
            std::collections::BTreeMap::new();
        for q in &contents.quarantine {
            by_cluster.entry(q.cluster.as_str()).or_default().push(q);
        }
        let stem = contents.quarantine_stem.as_deref().unwrap_or(writer_id);
        let quarantine_files: Vec<(String, Vec<&Quarantined>)> = by_cluster
            .into_iter()
            .map(|(cluster, records)| (crate::layout::quarantine_file(stem, cluster), records))
            .collect();
        let mut paths: Vec<String> = contents
            .files
            .iter()
            .map(|f| f.relative_path.clone())
            .collect();
        paths.extend(quarantine_files.iter().map(|(p, _)| p.clone()));
        if let Some(hook) = before_put {
            hook(&paths)?;
        }
        let intent = self.write_intent(writer_id, &paths).await?;
        let mut entries = Vec::with_capacity(contents.files.len());
        for f in &contents.files {
            let rel = &f.relative_path;
            let (sha256, bytes) = self.put_evidence(rel, f.bytes.clone(), &f.sha256).await?;
            entries.push(ManifestFile {
                table: f.table.name().to_string(),
                path: rel.clone(),
                sha256,
                bytes,
                rows: f.rows,
                cluster: f.cluster.clone(),
                min_time_micros: f.min_micros,
                max_time_micros: f.max_micros,
                rows_root: f.rows_root.map(hex::encode),
            });
        }
        let mut quarantine_entries = Vec::new();
        for (rel, records) in &quarantine_files {
            let (sha256, bytes) = self.put_quarantine(rel, records).await?;
            quarantine_entries.push(ManifestQuarantine {
                path: rel.clone(),
                sha256,
                bytes,
                records: records.len() as u64,
            });
        }
        crate::failpoint("before-manifest-record");
        let record = self
            .append_manifest(writer_id, entries, quarantine_entries, contents, retry)
            .await?;
        if let Some(intent) = intent {
            // The record names the files now; a leftover intent would only cost a check.
            if let Err(e) = self.store.delete(&intent).await {
                tracing::debug!(error = %e, "could not delete a commit intent");
            }
        }
        Ok(CommitOutcome {
            record,
            latency: started.elapsed(),
        })
    }

    async fn write_intent(
        &self,
        writer_id: &str,
        paths: &[String],
    ) -> Result<Option<Path>, ArchiveError> {
        if paths.is_empty() {
            return Ok(None);
        }
        let rel = format!("{INTENTS_DIR}/{writer_id}-{:06}.json", next_counter());
        let body = serde_json::to_vec(&Intent {
            writer: writer_id.to_string(),
            paths: paths.to_vec(),
        })
        .map_err(|e| ArchiveError::Manifest {
            path: rel.clone(),
            message: e.to_string(),
        })?;
        self.put(&rel, body.into(), PutMode::Overwrite)
            .await
            .map_err(store_err("put", &rel))?;
        Ok(Some(self.path(&rel)))
    }

    /// Deletes the files of commits that never got their manifest record (a writer died
    /// between its puts and its record): every intent older than `min_age` whose files no
    /// record names. Returns the number of files deleted.
    pub async fn clean_orphans(&self, min_age: Duration) -> Result<u64, ArchiveError> {
        let dir = self.path(INTENTS_DIR);
        let intents: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(store_err("list", &dir))?;
        let now = chrono::Utc::now();
        let old: Vec<_> = intents
            .into_iter()
            .filter(|m| {
                (now - m.last_modified)
                    .to_std()
                    .is_ok_and(|age| age >= min_age)
            })
            .collect();
        if old.is_empty() {
            return Ok(0);
        }
        let committed = crate::attested::AttestedFiles::load(self).await?;
        let mut deleted = 0u64;
        for meta in old {
            let body = self
                .store
                .get(&meta.location)
                .await
                .map_err(store_err("get", &meta.location))?
                .bytes()
                .await
                .map_err(store_err("get", &meta.location))?;
            let intent: Intent =
                serde_json::from_slice(&body).map_err(|e| ArchiveError::Manifest {
                    path: meta.location.to_string(),
                    message: e.to_string(),
                })?;
            for rel in &intent.paths {
                if committed.names(rel) {
                    continue;
                }
                match self.store.delete(&self.path(rel)).await {
                    Ok(()) => {
                        deleted += 1;
                        tracing::warn!(path = %rel, writer = %intent.writer, "deleted a file a crashed commit left behind (no manifest record names it)");
                    }
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(store_err("delete", rel)(e)),
                }
            }
            match self.store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_err("delete", &meta.location)(e)),
            }
        }
        Ok(deleted)
    }

    /// Reads record `sequence` and the SHA-256 of its bytes; `None` when it does not exist.
    pub async fn record(
        &self,
        sequence: u64,
    ) -> Result<Option<(ManifestRecord, String)>, ArchiveError> {
        let path = self.path(&format!(
            "{MANIFEST_DIR}/{}",
            ManifestRecord::file_name(sequence)
        ));
        match self.read_manifest(&path).await {
            Ok(r) => Ok(Some(r)),
            Err(ArchiveError::Store {
                source: object_store::Error::NotFound { .. },
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The newest manifest record and the SHA-256 of its bytes, if any. Reads the head
    /// pointer and looks past it (O(1) requests); lists `_manifest/` only for an archive
    /// written before the pointer existed, or when the pointer names a missing record.
    pub async fn manifest_head(&self) -> Result<Option<(ManifestRecord, String)>, ArchiveError> {
        let pointed = match self.read_head_pointer().await? {
            Some(seq) => self.record(seq).await?,
            None => None,
        };
        let mut head = match pointed {
            Some(h) => h,
            None => {
                let records = self.manifest_paths().await?;
                let Some(last) = records.last() else {
                    return Ok(None);
                };
                self.read_manifest(last).await?
            }
        };
        // The pointer may lag: a writer died between its record and the pointer, or two
        // writers raced. Records are consecutive, so the next missing one ends the chain.
        while let Some(next) = self.record(head.0.sequence + 1).await? {
            head = next;
        }
        Ok(Some(head))
    }

    async fn read_head_pointer(&self) -> Result<Option<u64>, ArchiveError> {
        let path = self.path(&format!("{MANIFEST_DIR}/{HEAD_FILE}"));
        let bytes = match self.store.get(&path).await {
            Ok(r) => r.bytes().await.map_err(store_err("get", &path))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(store_err("get", &path)(e)),
        };
        match serde_json::from_slice::<Head>(&bytes) {
            Ok(h) => Ok(Some(h.sequence)),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an unreadable manifest head pointer");
                Ok(None)
            }
        }
    }

    async fn write_head_pointer(&self, sequence: u64) {
        let rel = format!("{MANIFEST_DIR}/{HEAD_FILE}");
        let body = format!("{{\"sequence\":{sequence}}}\n");
        if let Err(e) = self.put(&rel, body.into(), PutMode::Overwrite).await {
            // Only a hint: readers find the newest record past a stale pointer.
            tracing::warn!(error = %e, "could not update the manifest head pointer");
        }
    }

    /// Every manifest record in sequence order, with the SHA-256 of its bytes (read
    /// concurrently, by sequence number, up to the head).
    pub async fn records(&self) -> Result<Vec<(ManifestRecord, String)>, ArchiveError> {
        let Some((head, head_sha)) = self.manifest_head().await? else {
            return Ok(Vec::new());
        };
        let mut out = self
            .records_between(1, head.sequence.saturating_sub(1))
            .await?;
        out.push((head, head_sha));
        Ok(out)
    }

    /// Records `first..=last` in sequence order, read concurrently; a missing one is an
    /// error (the chain has no gaps).
    pub async fn records_between(
        &self,
        first: u64,
        last: u64,
    ) -> Result<Vec<(ManifestRecord, String)>, ArchiveError> {
        futures::stream::iter(first..=last)
            .map(|seq| async move {
                self.record(seq)
                    .await?
                    .ok_or_else(|| ArchiveError::Manifest {
                        path: format!("{MANIFEST_DIR}/{}", ManifestRecord::file_name(seq)),
                        message: format!(
                            "record {seq} is missing although the chain goes on to {last}"
                        ),
                    })
            })
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await
    }

    /// How far every Kafka partition is archived, as of the newest manifest record.
    pub async fn kafka_progress(&self) -> Result<KafkaProgress, ArchiveError> {
        let head = self.manifest_head().await?.map_or(0, |(r, _)| r.sequence);
        self.kafka.up_to(self, head).await
    }

    /// The newest mark of write-ahead log `log_id` in the manifest chain (0 if none): the
    /// records up to it are archived and must not be written again.
    pub async fn wal_mark(&self, log_id: &str) -> Result<u64, ArchiveError> {
        let Some((head, _)) = self.manifest_head().await? else {
            return Ok(0);
        };
        let mut seq = head.sequence;
        let mut record = Some(head);
        while let Some(r) = record {
            if let Some((id, through)) = r.webhook_mark()
                && id == log_id
            {
                return Ok(through);
            }
            seq -= 1;
            record = if seq == 0 {
                None
            } else {
                self.record(seq).await?.map(|(r, _)| r)
            };
        }
        Ok(0)
    }

    /// Deletes files a commit put but never named in a manifest record (the writer died
    /// between the two). Missing files are fine: the put may not have happened.
    pub async fn delete_uncommitted(&self, relative_paths: &[String]) -> Result<(), ArchiveError> {
        for rel in relative_paths {
            match self.store.delete(&self.path(rel)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_err("delete", rel)(e)),
            }
        }
        Ok(())
    }

    /// Object paths of all manifest records, in sequence order (one LIST of `_manifest/`).
    pub async fn manifest_paths(&self) -> Result<Vec<Path>, ArchiveError> {
        let dir = self.path(MANIFEST_DIR);
        let mut paths: Vec<Path> = self
            .store
            .list(Some(&dir))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(store_err("list", dir.to_string()))?;
        paths.retain(|p| p.as_ref().ends_with(".json"));
        paths.sort();
        Ok(paths)
    }

    /// Reads one manifest record and the SHA-256 of its bytes.
    pub async fn read_manifest(
        &self,
        path: &Path,
    ) -> Result<(ManifestRecord, String), ArchiveError> {
        let bytes = self
            .store
            .get(path)
            .await
            .map_err(store_err("get", path))?
            .bytes()
            .await
            .map_err(store_err("get", path))?;
        let record = ManifestRecord::parse(&bytes, path.as_ref())?;
        Ok((record, hex::encode(Sha256::digest(&bytes))))
    }

    /// A record among the last few written by `writer_id` with exactly these contents.
    async fn find_recent(
        &self,
        writer_id: &str,
        files: &[ManifestFile],
        quarantine: &[ManifestQuarantine],
        contents: &CommitContents,
    ) -> Result<Option<ManifestRecord>, ArchiveError> {
        /// Records looked at: other writers may have committed after the lost answer.
        const LOOK_BACK: u64 = 32;
        let Some((head, _)) = self.manifest_head().await? else {
            return Ok(None);
        };
        let newest = head.sequence;
        let mut record = Some(head);
        let mut seq = newest;
        while let Some(r) = record {
            if r.writer == writer_id
                && r.files == files
                && r.quarantine == quarantine
                && contents.stamped(&r)
            {
                return Ok(Some(r));
            }
            seq -= 1;
            if seq == 0 || newest - seq >= LOOK_BACK {
                break;
            }
            record = self.record(seq).await?.map(|(r, _)| r);
        }
        Ok(None)
    }

    async fn append_manifest(
        &self,
        writer_id: &str,
        files: Vec<ManifestFile>,
        quarantine: Vec<ManifestQuarantine>,
        contents: &CommitContents,
        retry: bool,
    ) -> Result<ManifestRecord, ArchiveError> {
        const ATTEMPTS: u32 = 16;
        if retry
            && let Some(done) = self
                .find_recent(writer_id, &files, &quarantine, contents)
                .await?
        {
            // An earlier attempt of this very commit got its record in; its answer was lost.
            tracing::info!(
                sequence = done.sequence,
                "the manifest record of this commit was already written"
            );
            return Ok(done);
        }
        for _ in 0..ATTEMPTS {
            let head = self.manifest_head().await?;
            let (sequence, previous_sha256) = match &head {
                Some((r, sha)) => (r.sequence + 1, Some(sha.clone())),
                None => (1, None),
            };
            // Kafka offsets are archived once: checked against every record this one
            // chains after, so of two writers holding the same range (a zombie and its
            // replacement) at most one gets its record in.
            if let Some(SourceMark::Kafka { ranges, .. }) = &contents.source {
                let progress = self.kafka.up_to(self, sequence - 1).await?;
                if let Some((r, archived_through)) = progress.overlap(ranges) {
                    return Err(ArchiveError::RangeArchived {
                        topic: r.topic.clone(),
                        partition: r.partition,
                        from_offset: r.from_offset,
                        through_offset: r.through_offset,
                        archived_through,
                        sequence: sequence - 1,
                    });
                }
            }
            let mut record = ManifestRecord::new(
                sequence,
                previous_sha256,
                writer_id,
                files.clone(),
                quarantine.clone(),
            );
            contents.stamp(&mut record);
            let rel = format!("{MANIFEST_DIR}/{}", ManifestRecord::file_name(sequence));
            let body = serde_json::to_vec_pretty(&record).map_err(|e| ArchiveError::Manifest {
                path: rel.clone(),
                message: e.to_string(),
            })?;
            // Create-if-absent: of two writers racing for one sequence number, one wins and
            // the other re-reads the head and chains after it.
            let body_copy = bytes::Bytes::from(body);
            let created = match self.put(&rel, body_copy.clone(), PutMode::Create).await {
                Ok(()) => Ok(true),
                // The store's client retries a PUT whose answer was lost; if the first try
                // got in, the retry finds this very record there: ours, not a rival's.
                Err(object_store::Error::AlreadyExists { .. }) => Ok(self
                    .get_if_exists(&rel)
                    .await?
                    .is_some_and(|there| there == body_copy)),
                Err(e) => Err(e),
            };
            match created {
                Ok(true) => {
                    self.kafka.wrote(&record);
                    self.write_head_pointer(sequence).await;
                    let digest: [u8; 32] = Sha256::digest(&body_copy).into();
                    if sequence % crate::checkpoint::CHECKPOINT_EVERY == 0 {
                        crate::checkpoint::write(self, sequence, &hex::encode(digest)).await;
                    }
                    if let Some(log) = &self.log {
                        // The record is durable; the log is derived from the chain, so a
                        // failure here is made good by the next commit (or verify says
                        // which records no checkpoint covers yet).
                        match log.extend(self, sequence, Some(digest)).await {
                            Ok(head) => {
                                tracing::debug!(size = head.size, "signed a log checkpoint")
                            }
                            Err(e) => {
                                tracing::warn!(sequence, error = %e, "could not extend the signed log; the next commit retries")
                            }
                        }
                    }
                    return Ok(record);
                }
                Ok(false) => continue,
                Err(source) => {
                    return Err(ArchiveError::Store {
                        operation: "put",
                        path: rel,
                        source,
                    });
                }
            }
        }
        Err(ArchiveError::CommitContention { attempts: ATTEMPTS })
    }
}

fn sync_dir(dir: &FsPath) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn next_counter() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
