//! Where an archive lives: a local directory or an object store URL, and the store to reach it.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use url::Url;

use crate::error::ArchiveError;

/// A parsed archive location: the object store, the prefix inside it and its URL.
#[derive(Debug, Clone)]
pub struct ArchiveLocation {
    /// URL of the archive root (`file:///abs/dir/`, `s3://bucket/prefix/`).
    pub url: Url,
    /// Local directory when the archive is on the local filesystem.
    pub local_dir: Option<PathBuf>,
    /// Store options (`aws_endpoint`, ...) that override the environment's for this
    /// archive alone.
    pub store_options: Vec<(String, String)>,
}

impl ArchiveLocation {
    /// Parses a local path or an object_store URL (`file://`, `s3://`, `gs://`, `az://`, ...).
    pub fn parse(location: &str) -> Result<Self, ArchiveError> {
        let err = |message: String| ArchiveError::Location {
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
            return Ok(Self {
                url,
                local_dir,
                store_options: Vec::new(),
            });
        }
        let dir = std::path::absolute(location).map_err(|e| err(e.to_string()))?;
        let url = Url::from_directory_path(&dir)
            .map_err(|()| err("not a usable directory path".into()))?;
        Ok(Self {
            url,
            local_dir: Some(dir),
            store_options: Vec::new(),
        })
    }

    /// The same location with a store option (object_store's key, `aws_endpoint`) set over
    /// the environment's.
    pub fn with_store_option(mut self, key: &str, value: &str) -> Self {
        self.store_options
            .push((key.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// Builds the object store and the archive root's path inside it. A local directory is
    /// created when missing only if `create` is set (writers create, readers never do).
    /// Cloud stores take their credentials and options from the environment the
    /// object_store way (`AWS_*`, `GOOGLE_*`, `AZURE_*`).
    pub fn open_store(&self, create: bool) -> Result<(Arc<dyn ObjectStore>, Path), ArchiveError> {
        let err = |message: String| ArchiveError::Location {
            location: self.url.to_string(),
            message,
        };
        if let Some(dir) = &self.local_dir {
            if create {
                std::fs::create_dir_all(dir)
                    .map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
            } else if !dir.is_dir() {
                return Err(ArchiveError::NotAnArchive {
                    location: dir.display().to_string(),
                });
            }
            let fs = LocalFileSystem::new_with_prefix(dir).map_err(|e| err(e.to_string()))?;
            return Ok((Arc::new(fs), Path::default()));
        }
        let mut opts: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| {
                k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_")
            })
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .filter(|(k, _)| !self.store_options.iter().any(|(o, _)| o == k))
            .collect();
        opts.extend(self.store_options.iter().cloned());
        let (store, prefix) =
            object_store::parse_url_opts(&self.url, opts).map_err(|e| err(e.to_string()))?;
        Ok((Arc::from(store), prefix))
    }

    /// The archive root as an object path from the root of its URL's store (what a reader
    /// that registers the store for the URL's scheme and authority, like DataFusion, sees).
    pub fn root_in_url_store(&self) -> Path {
        Path::from_url_path(self.url.path()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_urls() {
        let l = ArchiveLocation::parse("/tmp/x").unwrap();
        assert_eq!(l.url.as_str(), "file:///tmp/x/");
        assert_eq!(l.local_dir.as_deref(), Some(std::path::Path::new("/tmp/x")));
        assert_eq!(l.root_in_url_store().as_ref(), "tmp/x");
        let s = ArchiveLocation::parse("s3://bucket/audit").unwrap();
        assert_eq!(s.url.as_str(), "s3://bucket/audit/");
        assert!(s.local_dir.is_none());
        assert_eq!(s.root_in_url_store().as_ref(), "audit");
    }
}
