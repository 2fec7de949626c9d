//! Where the archive lives (local directory or object store URL) and how files are committed.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use sha2::{Digest, Sha256};
use tracing::Instrument;
use url::Url;

use crate::error::IngestError;
use crate::manifest::{MANIFEST_DIR, ManifestFile, ManifestQuarantine, ManifestRecord, WalMark};
use crate::partitioned_writer::FinishedFile;
use crate::quarantine::QUARANTINE_DIR;

/// A parsed archive location: the object store, the prefix inside it and its URL.
#[derive(Debug, Clone)]
pub struct ArchiveLocation {
    /// URL of the archive root (`file:///abs/dir/`, `s3://bucket/prefix/`).
    pub url: Url,
    /// Local directory when the archive is on the local filesystem.
    pub local_dir: Option<PathBuf>,
}

impl ArchiveLocation {
    /// Parses a local path or an object_store URL (`file://`, `s3://`, `gs://`, `az://`, ...).
    pub fn parse(location: &str) -> Result<Self, IngestError> {
        let err = |message: String| IngestError::Location {
            location: location.to_string(),
            message,
        };
        if location.contains("://") {
            let mut url = Url::parse(location).map_err(|e| err(e.to_string()))?;
            if !url.path().ends_with('/') {
                let p = format!("{}/", url.path());
                url.set_path(&p);
            }
            let local_dir = if url.scheme() == "file" {
                Some(
                    url.to_file_path()
                        .map_err(|()| err("not an absolute file path".into()))?,
                )
            } else {
                None
            };
            return Ok(Self { url, local_dir });
        }
        let dir = std::path::absolute(location).map_err(|e| err(e.to_string()))?;
        let url = Url::from_directory_path(&dir)
            .map_err(|()| err("not a usable directory path".into()))?;
        Ok(Self {
            url,
            local_dir: Some(dir),
        })
    }

    /// Builds the object store. Cloud stores take their credentials and options from the
    /// environment the object_store way (`AWS_*`, `GOOGLE_*`, `AZURE_*`).
    pub fn open_store(&self) -> Result<(Arc<dyn ObjectStore>, Path), IngestError> {
        let err = |message: String| IngestError::Location {
            location: self.url.to_string(),
            message,
        };
        if let Some(dir) = &self.local_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
            let fs = LocalFileSystem::new_with_prefix(dir).map_err(|e| err(e.to_string()))?;
            return Ok((Arc::new(fs), Path::default()));
        }
        let opts: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| {
                k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_")
            })
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        let (store, prefix) =
            object_store::parse_url_opts(&self.url, opts).map_err(|e| err(e.to_string()))?;
        Ok((Arc::from(store), prefix))
    }
}

/// Parts of the quarantine file uploaded at a time (bounds its memory while streaming).
const QUARANTINE_PART_BYTES: usize = 8 << 20;

/// What one commit makes visible: data files, quarantined inputs and, for the webhook, how
/// far its write-ahead log is archived.
#[derive(Debug, Default)]
pub struct CommitContents {
    /// Finished Parquet files of every table.
    pub files: Vec<FinishedFile>,
    /// Inputs that could not be decoded.
    pub quarantine: Vec<schema::Quarantined>,
    /// Where the quarantine file goes ([`Archive::quarantine_path`]); `None` with no quarantine.
    pub quarantine_path: Option<String>,
    /// The write-ahead log position this commit covers.
    pub wal: Option<WalMark>,
}

/// Called by [`Archive::commit`] with every path it is about to put, before the first put.
pub type BeforePut<'a> = &'a (dyn Fn(&[String]) -> Result<(), IngestError> + Sync);

/// The evidence archive: data files, quarantine and the manifest chain in one store.
#[derive(Debug, Clone)]
pub struct Archive {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    location: ArchiveLocation,
}

/// What one commit wrote.
#[derive(Debug, Clone)]
pub struct CommitOutcome {
    /// The manifest record written.
    pub record: ManifestRecord,
    /// Time from the first put to the manifest being durable.
    pub latency: std::time::Duration,
}

impl Archive {
    /// Opens (creating a local directory if needed) the archive at `location`.
    pub fn open(location: ArchiveLocation) -> Result<Self, IngestError> {
        let (store, prefix) = location.open_store()?;
        Ok(Self {
            store,
            prefix,
            location,
        })
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

    /// Puts one file a commit will name and returns its SHA-256 (hex) and size.
    async fn put_evidence(
        &self,
        relative: &str,
        body: bytes::Bytes,
    ) -> Result<(String, u64), IngestError> {
        let sha256 = hex::encode(Sha256::digest(&body));
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
        records: &[schema::Quarantined],
    ) -> Result<(String, u64), IngestError> {
        use tokio::io::AsyncWriteExt;
        let path = self.path(relative);
        let io = |e: std::io::Error| IngestError::Store {
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
            .map_err(|e| IngestError::Fsync {
                path: relative.into(),
                source: e,
            })?;
        Ok((hex::encode(sha.finalize()), bytes))
    }

    /// Commits finished data files and quarantined inputs: puts every file, then appends a
    /// manifest record naming them (with SHA-256, rows, time range) to the hash chain.
    /// Nothing a commit wrote is referenced until its manifest record exists.
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
    ) -> Result<CommitOutcome, IngestError> {
        let started = Instant::now();
        let quarantine_rel = contents.quarantine_path.as_deref();
        if let Some(hook) = before_put {
            let mut paths: Vec<String> = contents
                .files
                .iter()
                .map(|f| f.relative_path.clone())
                .collect();
            paths.extend(quarantine_rel.map(str::to_string));
            hook(&paths)?;
        }
        let mut entries = Vec::with_capacity(contents.files.len());
        for f in &contents.files {
            let rel = &f.relative_path;
            let (sha256, bytes) = self.put_evidence(rel, f.bytes.clone()).await?;
            entries.push(ManifestFile {
                path: rel.clone(),
                sha256,
                bytes,
                rows: f.rows,
                cluster: f.cluster.clone(),
                min_request_received_at: f.min_micros,
                max_request_received_at: f.max_micros,
            });
        }
        let mut quarantine_entries = Vec::new();
        if let Some(rel) = quarantine_rel
            && !contents.quarantine.is_empty()
        {
            let (sha256, bytes) = self.put_quarantine(rel, &contents.quarantine).await?;
            quarantine_entries.push(ManifestQuarantine {
                path: rel.to_string(),
                sha256,
                bytes,
                records: contents.quarantine.len() as u64,
            });
        }
        let record = self
            .append_manifest(
                writer_id,
                entries,
                quarantine_entries,
                contents.wal.clone(),
                retry,
            )
            .await?;
        Ok(CommitOutcome {
            record,
            latency: started.elapsed(),
        })
    }

    /// The newest manifest record and the SHA-256 of its bytes, if any.
    pub async fn manifest_head(&self) -> Result<Option<(ManifestRecord, String)>, IngestError> {
        let records = self.manifest_paths().await?;
        let Some(last) = records.last() else {
            return Ok(None);
        };
        let (record, sha) = self.read_manifest(last).await?;
        Ok(Some((record, sha)))
    }

    /// The newest mark of write-ahead log `wal_id` in the manifest chain (0 if none): the
    /// records up to it are archived and must not be written again.
    pub async fn wal_mark(&self, wal_id: &str) -> Result<u64, IngestError> {
        for path in self.manifest_paths().await?.iter().rev() {
            let (record, _) = self.read_manifest(path).await?;
            if let Some(mark) = record.wal.filter(|m| m.id == wal_id) {
                return Ok(mark.through_seq);
            }
        }
        Ok(0)
    }

    /// Deletes files a commit put but never named in a manifest record (the writer died
    /// between the two). Missing files are fine: the put may not have happened.
    pub async fn delete_uncommitted(&self, relative_paths: &[String]) -> Result<(), IngestError> {
        for rel in relative_paths {
            match self.store.delete(&self.path(rel)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_err("delete", rel)(e)),
            }
        }
        Ok(())
    }

    /// A fresh relative path for a quarantine file of `writer_id` (decided once per commit,
    /// so a retried commit writes the same file).
    pub fn quarantine_path(writer_id: &str, cluster: &str) -> String {
        format!(
            "{QUARANTINE_DIR}/cluster={}/{writer_id}-{:06}.ndjson",
            crate::partitioned_writer::escape_partition_value(cluster),
            next_counter()
        )
    }

    /// Object paths of all manifest records, in sequence order.
    pub async fn manifest_paths(&self) -> Result<Vec<Path>, IngestError> {
        use futures::TryStreamExt;
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
    ) -> Result<(ManifestRecord, String), IngestError> {
        let bytes = self
            .store
            .get(path)
            .await
            .map_err(store_err("get", path.to_string()))?
            .bytes()
            .await
            .map_err(store_err("get", path.to_string()))?;
        let record: ManifestRecord =
            serde_json::from_slice(&bytes).map_err(|e| IngestError::Manifest {
                path: path.to_string(),
                message: e.to_string(),
            })?;
        Ok((record, hex::encode(Sha256::digest(&bytes))))
    }

    /// A record among the last few written by `writer_id` with exactly these contents.
    async fn find_recent(
        &self,
        writer_id: &str,
        files: &[ManifestFile],
        quarantine: &[ManifestQuarantine],
        wal: Option<&WalMark>,
    ) -> Result<Option<ManifestRecord>, IngestError> {
        /// Records looked at: other writers may have committed after the lost answer.
        const LOOK_BACK: usize = 32;
        let paths = self.manifest_paths().await?;
        for path in paths.iter().rev().take(LOOK_BACK) {
            let (record, _) = self.read_manifest(path).await?;
            if record.writer == writer_id
                && record.files == files
                && record.quarantine == quarantine
                && record.wal.as_ref() == wal
            {
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    async fn append_manifest(
        &self,
        writer_id: &str,
        files: Vec<ManifestFile>,
        quarantine: Vec<ManifestQuarantine>,
        wal: Option<WalMark>,
        retry: bool,
    ) -> Result<ManifestRecord, IngestError> {
        const ATTEMPTS: u32 = 16;
        if retry
            && let Some(done) = self
                .find_recent(writer_id, &files, &quarantine, wal.as_ref())
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
            let mut record = ManifestRecord::new(
                sequence,
                previous_sha256,
                writer_id,
                files.clone(),
                quarantine.clone(),
            );
            record.wal = wal.clone();
            let rel = format!("{MANIFEST_DIR}/{}", ManifestRecord::file_name(sequence));
            let body = serde_json::to_vec_pretty(&record).map_err(|e| IngestError::Manifest {
                path: rel.clone(),
                message: e.to_string(),
            })?;
            // Create-if-absent: of two writers racing for one sequence number, one wins and
            // the other re-reads the head and chains after it.
            match self.put(&rel, body.into(), PutMode::Create).await {
                Ok(()) => return Ok(record),
                Err(object_store::Error::AlreadyExists { .. }) => continue,
                Err(source) => {
                    return Err(IngestError::Store {
                        operation: "put",
                        path: rel,
                        source,
                    });
                }
            }
        }
        Err(IngestError::CommitContention { attempts: ATTEMPTS })
    }
}

use auditlake_schema as schema;

/// Maps an object store error on `path` to [`IngestError::Store`].
fn store_err(
    operation: &'static str,
    path: impl ToString,
) -> impl FnOnce(object_store::Error) -> IngestError {
    move |source| IngestError::Store {
        operation,
        path: path.to_string(),
        source,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_urls() {
        let l = ArchiveLocation::parse("/tmp/x").unwrap();
        assert_eq!(l.url.as_str(), "file:///tmp/x/");
        assert_eq!(l.local_dir.as_deref(), Some(FsPath::new("/tmp/x")));
        let s = ArchiveLocation::parse("s3://bucket/audit").unwrap();
        assert_eq!(s.url.as_str(), "s3://bucket/audit/");
        assert!(s.local_dir.is_none());
    }
}
