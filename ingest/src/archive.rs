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
use crate::quarantine::{QUARANTINE_DIR, quarantine_ndjson};

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
        bytes: Vec<u8>,
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
        body: Vec<u8>,
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

    /// Commits finished data files and quarantined inputs: puts every file, then appends a
    /// manifest record naming them (with SHA-256, rows, time range) to the hash chain.
    /// Nothing a commit wrote is referenced until its manifest record exists.
    pub async fn commit(
        &self,
        writer_id: &str,
        files: Vec<FinishedFile>,
        quarantine: &[schema::Quarantined],
        quarantine_cluster: &str,
        wal: Option<WalMark>,
        before_put: Option<BeforePut<'_>>,
    ) -> Result<CommitOutcome, IngestError> {
        let started = Instant::now();
        let quarantine_rel =
            (!quarantine.is_empty()).then(|| Self::quarantine_path(writer_id, quarantine_cluster));
        if let Some(hook) = before_put {
            let mut paths: Vec<String> = files.iter().map(|f| f.relative_path.clone()).collect();
            paths.extend(quarantine_rel.clone());
            hook(&paths)?;
        }
        let mut entries = Vec::with_capacity(files.len());
        for f in files {
            let rel = f.relative_path;
            let (sha256, bytes) = self.put_evidence(&rel, f.bytes).await?;
            entries.push(ManifestFile {
                path: rel,
                sha256,
                bytes,
                rows: f.rows,
                cluster: f.cluster,
                min_request_received_at: f.min_micros,
                max_request_received_at: f.max_micros,
            });
        }
        let mut quarantine_entries = Vec::new();
        if let Some(rel) = quarantine_rel {
            let body = quarantine_ndjson(quarantine);
            let (sha256, bytes) = self.put_evidence(&rel, body).await?;
            quarantine_entries.push(ManifestQuarantine {
                path: rel,
                sha256,
                bytes,
                records: quarantine.len() as u64,
            });
        }
        let record = self
            .append_manifest(writer_id, entries, quarantine_entries, wal)
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

    /// The relative path a quarantine file of this commit will get.
    fn quarantine_path(writer_id: &str, cluster: &str) -> String {
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

    async fn append_manifest(
        &self,
        writer_id: &str,
        files: Vec<ManifestFile>,
        quarantine: Vec<ManifestQuarantine>,
        wal: Option<WalMark>,
    ) -> Result<ManifestRecord, IngestError> {
        const ATTEMPTS: u32 = 16;
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
            match self.put(&rel, body, PutMode::Create).await {
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
