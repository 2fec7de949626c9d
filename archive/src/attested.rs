//! What the manifest attests: the live files of each table (committed and not removed), and
//! a read-only object store view that lists only those, so SQL counts exactly the files the
//! evidence chain names and never a stray one.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

use crate::archive::Archive;
use crate::error::{ArchiveError, store_err};
use crate::layout::Table;

fn parse_time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

/// A file a committed manifest record names and no later record removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestedFile {
    /// Its table.
    pub table: Table,
    /// Size in bytes, as committed.
    pub bytes: u64,
    /// SHA-256 as committed, hex.
    pub sha256: String,
    /// When its record was committed (stands in for the object's modification time).
    pub committed_at: DateTime<Utc>,
    /// The manifest record that committed it (0: unknown, from a cache written before
    /// caches kept it).
    pub sequence: u64,
}

/// The live files of every table, by path relative to the archive root.
#[derive(Debug, Clone, Default)]
pub struct AttestedFiles {
    files: BTreeMap<String, AttestedFile>,
    records: u64,
}

impl AttestedFiles {
    /// The live files as of the newest record: the newest checkpoint, then the records
    /// after it (the whole chain when there is no usable checkpoint).
    pub async fn load(archive: &Archive) -> Result<Self, ArchiveError> {
        match archive.manifest_head().await? {
            Some((head, _)) => Self::load_through(archive, head.sequence).await,
            None => Ok(Self::default()),
        }
    }

    /// The live files as of record `through`.
    pub async fn load_through(archive: &Archive, through: u64) -> Result<Self, ArchiveError> {
        let mut out = Self::default();
        let mut first = 1;
        if let Some(c) = crate::checkpoint::newest(archive, through).await? {
            for f in c.files {
                let committed_at = parse_time(&f.committed_at);
                out.add(
                    f.path,
                    &f.table,
                    f.bytes,
                    f.sha256,
                    committed_at,
                    f.sequence,
                );
            }
            out.records = c.sequence;
            first = c.sequence + 1;
        }
        for (record, _) in archive.records_between(first, through).await? {
            out.records += 1;
            let committed_at = parse_time(&record.committed_at);
            for f in record.files {
                out.add(
                    f.path,
                    &f.table,
                    f.bytes,
                    f.sha256,
                    committed_at,
                    record.sequence,
                );
            }
            for r in record.removed {
                out.files.remove(&r.path);
            }
        }
        Ok(out)
    }

    /// Adds a committed file; one of a table this version does not know is not queried.
    fn add(
        &mut self,
        path: String,
        table: &str,
        bytes: u64,
        sha256: String,
        committed_at: DateTime<Utc>,
        sequence: u64,
    ) {
        let Some(table) = Table::from_name(table) else {
            tracing::warn!(%path, table, "the manifest names a file of an unknown table; it is not queried");
            return;
        };
        self.files.insert(
            path,
            AttestedFile {
                table,
                bytes,
                sha256,
                committed_at,
                sequence,
            },
        );
    }

    /// The live files as a checkpoint lists them.
    pub(crate) fn checkpoint_files(&self) -> Vec<crate::checkpoint::CheckpointFile> {
        self.files
            .iter()
            .map(|(path, f)| crate::checkpoint::CheckpointFile {
                table: f.table.name().to_string(),
                path: path.clone(),
                sha256: f.sha256.clone(),
                bytes: f.bytes,
                committed_at: f
                    .committed_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                sequence: f.sequence,
            })
            .collect()
    }

    /// Whether `relative` is a live file of some table.
    pub fn names(&self, relative: &str) -> bool {
        self.files.contains_key(relative)
    }

    /// Manifest records the set reflects (through a checkpoint or read one by one).
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Live files of `table`, by relative path.
    pub fn files(&self, table: Table) -> impl Iterator<Item = (&str, &AttestedFile)> {
        let dir = format!("{}/", table.name());
        self.files
            .range(dir.clone()..)
            .take_while(move |(p, _)| p.starts_with(&dir))
            .map(|(p, f)| (p.as_str(), f))
    }

    /// Parquet files present under the tables' directories that no record names (left by a
    /// crash mid-commit, or put there by someone): one LIST per table.
    pub async fn unattested(&self, archive: &Archive) -> Result<Vec<String>, ArchiveError> {
        let store = archive.store();
        let mut out = Vec::new();
        for table in Table::ALL {
            let dir = archive.path(table.name());
            let listed: Vec<ObjectMeta> = store
                .list(Some(&dir))
                .try_collect()
                .await
                .map_err(store_err("list", &dir))?;
            for meta in listed {
                if let Some(rel) = archive.relative(&meta.location)
                    && rel.ends_with(".parquet")
                    && !self.names(&rel)
                {
                    out.push(rel);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// A read-only view of `inner` (the store serving the archive's URL, where the archive
    /// root is `root`) in which the tables' directories list only these files.
    pub fn store_view(&self, inner: Arc<dyn ObjectStore>, root: &Path) -> AttestedStore {
        let mut listed = BTreeMap::new();
        for (rel, f) in &self.files {
            let mut p = root.clone();
            for part in rel.split('/') {
                p = p.clone().join(part);
            }
            listed.insert(
                p.to_string(),
                ObjectMeta {
                    location: p,
                    last_modified: f.committed_at,
                    size: f.bytes,
                    e_tag: None,
                    version: None,
                },
            );
        }
        let tables = Table::ALL
            .iter()
            .map(|t| root.clone().join(t.name()))
            .collect();
        AttestedStore {
            inner,
            tables,
            listed: Arc::new(listed),
        }
    }
}

/// An object store whose listings under the archive's table directories come from the
/// manifest; reads pass through, and writes are refused.
#[derive(Debug, Clone)]
pub struct AttestedStore {
    inner: Arc<dyn ObjectStore>,
    tables: Vec<Path>,
    listed: Arc<BTreeMap<String, ObjectMeta>>,
}

impl fmt::Display for AttestedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AttestedStore({})", self.inner)
    }
}

impl AttestedStore {
    /// Whether listings under `prefix` come from the manifest (it is a table directory or
    /// inside one).
    fn attests(&self, prefix: Option<&Path>) -> bool {
        prefix.is_some_and(|p| self.tables.iter().any(|t| p.prefix_matches(t)))
    }

    /// The attested objects under `prefix`.
    fn under<'a>(&'a self, prefix: &'a Path) -> impl Iterator<Item = &'a ObjectMeta> + 'a {
        let start = format!("{prefix}/");
        self.listed
            .range(start.clone()..)
            .take_while(move |(k, _)| k.starts_with(&start))
            .map(|(_, m)| m)
    }
}

fn read_only(operation: &str) -> object_store::Error {
    object_store::Error::NotSupported {
        source: format!("{operation}: the archive is opened read-only").into(),
    }
}

#[async_trait]
impl ObjectStore for AttestedStore {
    async fn put_opts(
        &self,
        _location: &Path,
        _payload: PutPayload,
        _opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        Err(read_only("put"))
    }

    async fn put_multipart_opts(
        &self,
        _location: &Path,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Err(read_only("put"))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        locations.map(|_| Err(read_only("delete"))).boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        match prefix {
            Some(p) if self.attests(Some(p)) => {
                let found: Vec<_> = self.under(p).cloned().map(Ok).collect();
                futures::stream::iter(found).boxed()
            }
            _ => self.inner.list(prefix),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let Some(p) = prefix.filter(|p| self.attests(Some(p))) else {
            return self.inner.list_with_delimiter(prefix).await;
        };
        let depth = p.parts().count();
        let mut dirs = BTreeSet::new();
        let mut objects = Vec::new();
        for meta in self.under(p) {
            let parts: Vec<_> = meta.location.parts().collect();
            if parts.len() == depth + 1 {
                objects.push(meta.clone());
            } else {
                dirs.insert(Path::from_iter(parts[..=depth].iter().cloned()));
            }
        }
        Ok(ListResult {
            common_prefixes: dirs.into_iter().collect(),
            objects,
        })
    }

    async fn copy_opts(
        &self,
        _from: &Path,
        _to: &Path,
        _options: CopyOptions,
    ) -> object_store::Result<()> {
        Err(read_only("copy"))
    }
}
