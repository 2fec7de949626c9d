//! The webhook's credentials (server certificate and key, client CA, bearer tokens), held so
//! they can be replaced while the server runs: on SIGHUP, and when one of their files
//! changes (Kubernetes updates mounted Secrets in place). A reload that fails keeps the
//! credentials in force and says why at ERROR.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use crate::bearer_tokens::BearerTokens;
use crate::serve::{ServeConfig, ServeError};

/// How often the credential files are checked for changes.
const POLL: Duration = Duration::from_secs(30);

/// One consistent set of credentials.
pub struct CredentialSet {
    /// TLS, unless plain HTTP was asked for.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Accepted bearer tokens, when configured.
    pub tokens: Option<BearerTokens>,
}

/// The credentials in force; cheap to clone and read per connection.
#[derive(Clone)]
pub struct Credentials(Arc<RwLock<Arc<CredentialSet>>>);

fn build(config: &ServeConfig) -> Result<CredentialSet, ServeError> {
    let tls = if config.insecure_plain_http {
        None
    } else {
        match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::server_config(
                cert,
                key,
                config.client_ca.as_deref(),
            )?),
            _ => {
                return Err(ServeError::Config(
                    "--tls-cert and --tls-key are required (or --insecure-plain-http for a \
                     loopback test)"
                        .into(),
                ));
            }
        }
    };
    let tokens = match &config.bearer_tokens_file {
        Some(p) => Some(BearerTokens::load(p).map_err(|source| ServeError::File {
            path: p.clone(),
            source,
        })?),
        None => None,
    };
    Ok(CredentialSet { tls, tokens })
}

impl Credentials {
    /// Loads the credentials `config` names.
    pub fn load(config: &ServeConfig) -> Result<Self, ServeError> {
        Ok(Self(Arc::new(RwLock::new(Arc::new(build(config)?)))))
    }

    /// The set in force now.
    pub fn current(&self) -> Arc<CredentialSet> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn replace(&self, set: CredentialSet) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
    }
}

fn files(config: &ServeConfig) -> Vec<PathBuf> {
    [
        &config.tls_cert,
        &config.tls_key,
        &config.client_ca,
        &config.bearer_tokens_file,
    ]
    .into_iter()
    .flatten()
    .cloned()
    .collect()
}

fn stamps(paths: &[PathBuf]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// Reloads `credentials` on SIGHUP and when a credential file changes; runs until aborted.
pub async fn reload_on_change(config: ServeConfig, credentials: Credentials) {
    let paths = files(&config);
    let mut seen = stamps(&paths);
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let signalled = match hangup.as_mut() {
            Some(h) => tokio::select! {
                _ = h.recv() => true,
                () = tokio::time::sleep(POLL) => false,
            },
            None => {
                tokio::time::sleep(POLL).await;
                false
            }
        };
        #[cfg(not(unix))]
        let signalled = {
            tokio::time::sleep(POLL).await;
            false
        };
        let now = stamps(&paths);
        if !signalled && now == seen {
            continue;
        }
        seen = now;
        let why = if signalled {
            "SIGHUP"
        } else {
            "a file changed"
        };
        match build(&config) {
            Ok(set) => {
                credentials.replace(set);
                tracing::info!(
                    trigger = why,
                    "credentials reloaded (certificates, client CA, tokens)"
                );
            }
            Err(e) => tracing::error!(trigger = why, error = %e,
                "cannot reload the credentials; the previous ones stay in force"),
        }
    }
}
