//! TLS for the webhook: the server certificate, optional client-certificate verification
//! against the apiserver's CA, and the identity a verified client certificate names.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what} {path}: {message}")]
    Pem {
        /// Which file (server certificate, key, client CA).
        what: &'static str,
        /// Its path.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn pem_err<'a>(what: &'static str, path: &'a Path) -> impl Fn(String) -> TlsError + 'a {
    move |message| TlsError::Pem {
        what,
        path: path.display().to_string(),
        message,
    }
}

fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = pem_err(what, path);
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// A rustls server config for `cert`/`key` (PEM), verifying client certificates against
/// `client_ca` when given: then a client without a certificate from that CA does not get
/// past the handshake (it never reaches HTTP, so it cannot hold a request slot open).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates("server certificate", cert)?;
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err("server key", key)(e.to_string()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certificates("client CA", ca)? {
                roots
                    .add(c)
                    .map_err(|e| pem_err("client CA", ca)(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("server certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The identity a client certificate names: its subject's common name, or `unnamed`.
pub fn certificate_identity(cert: &CertificateDer<'_>) -> String {
    subject_common_name(cert.as_ref()).unwrap_or_else(|| "unnamed".to_string())
}

/// The subject CN of an X.509 certificate, walking just enough DER to find it.
fn subject_common_name(der: &[u8]) -> Option<String> {
    use auditlake_schema::der::{COMMON_NAME, element, name_attributes};
    const SEQUENCE: u8 = 0x30;
    let (_, cert, _) = element(der)?;
    let (tag, tbs, _) = element(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut rest = tbs;
    // version [0] is optional; then serial, signature algorithm, issuer, validity, subject.
    let (tag, _, after) = element(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    for _ in 0..4 {
        rest = element(rest)?.2;
    }
    let (_, subject, _) = element(rest)?;
    name_attributes(subject)
        .into_iter()
        .find(|(oid, _)| *oid == COMMON_NAME)
        .map(|(_, cn)| cn)
}
