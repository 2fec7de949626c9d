//! `auditlake serve`: flags, the TOML config file, and the order in which they apply.
//!
//! Every key of the config file is a flag and an `AUDITLAKE_*` variable. A key set in more
//! than one place takes, from strongest to weakest: the environment variable, the flag, the
//! config file, the built-in default.

use std::path::PathBuf;

use anyhow::{Context, Result};
use auditlake_ingest::ServeConfig;
use clap::{Args, FromArgMatches};

/// Flags of `auditlake serve`; each one is also a key of the config file (same name, `_`
/// for `-`) and an `AUDITLAKE_*` environment variable.
#[derive(Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// TOML config file with any of the keys below (unknown keys are an error).
    #[arg(long, env = "AUDITLAKE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address the webhook listens on [default: 127.0.0.1:8443].
    #[arg(long, env = "AUDITLAKE_LISTEN")]
    pub listen: Option<String>,

    /// Server certificate chain (PEM).
    #[arg(long, env = "AUDITLAKE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// Server private key (PEM).
    #[arg(long, env = "AUDITLAKE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// CA of the apiserver's client certificates (PEM): turns on mutual TLS; requests
    /// without a certificate get 401.
    #[arg(long, env = "AUDITLAKE_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,

    /// Serve plain HTTP without TLS: loopback addresses only (tests and demos), unless
    /// --allow-plain-http-beyond-loopback.
    #[arg(long, env = "AUDITLAKE_INSECURE_PLAIN_HTTP", num_args = 0..=1, default_missing_value = "true")]
    pub insecure_plain_http: Option<bool>,

    /// Allow --insecure-plain-http on an address other than loopback: events and tokens then
    /// cross the network unencrypted.
    #[arg(long, env = "AUDITLAKE_ALLOW_PLAIN_HTTP_BEYOND_LOOPBACK", num_args = 0..=1, default_missing_value = "true")]
    pub allow_plain_http_beyond_loopback: Option<bool>,

    /// Start without client authentication (no --client-ca, no --bearer-tokens-file): anyone
    /// who reaches the port can add events. Refused otherwise.
    #[arg(long, env = "AUDITLAKE_ALLOW_UNAUTHENTICATED", num_args = 0..=1, default_missing_value = "true")]
    pub allow_unauthenticated: Option<bool>,

    /// File of accepted bearer tokens: `<token> [<name>] [clusters=a,b]` per line (tokens of
    /// at least 20 characters; the name is recorded as the sender; a token naming clusters
    /// may post only those). Requests without a valid token get 401/403. Reloaded on SIGHUP
    /// and when the file changes, like the certificates.
    #[arg(long, env = "AUDITLAKE_BEARER_TOKENS_FILE")]
    pub bearer_tokens_file: Option<PathBuf>,

    /// Cluster of events posted to /audit/webhook; /audit/webhook/{cluster} overrides it
    /// [default: default].
    #[arg(long, env = "AUDITLAKE_CLUSTER")]
    pub cluster: Option<String>,

    /// The client certificate's common name is the cluster: a request whose path names
    /// another cluster is refused with 403.
    #[arg(long, env = "AUDITLAKE_CLUSTER_FROM_CLIENT_CERT", num_args = 0..=1, default_missing_value = "true")]
    pub cluster_from_client_cert: Option<bool>,

    /// Address of /healthz, /readyz and /metrics (plain HTTP) [default: 127.0.0.1:9464].
    #[arg(long, env = "AUDITLAKE_OPS_LISTEN")]
    pub ops_listen: Option<String>,

    /// Write-ahead log directory on local disk; keep it across restarts [default: ./auditlake-wal].
    /// It records the archive it feeds and refuses to replay into another.
    #[arg(long, env = "AUDITLAKE_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,

    /// Archive the write-ahead log's records into --archive although the log was written for
    /// another archive (after moving an archive, say).
    #[arg(long, env = "AUDITLAKE_WAL_RETARGET", num_args = 0..=1, default_missing_value = "true")]
    pub wal_retarget: Option<bool>,

    /// Answer 429 (Retry-After) once the write-ahead log holds this many bytes [default: 1 GiB].
    #[arg(long, env = "AUDITLAKE_WAL_MAX_BYTES")]
    pub wal_max_bytes: Option<u64>,

    /// Write-ahead log segment size [default: 64 MiB].
    #[arg(long, env = "AUDITLAKE_WAL_SEGMENT_BYTES")]
    pub wal_segment_bytes: Option<u64>,

    /// Largest request body, compressed and decompressed; larger gets 413 [default: 16 MiB].
    #[arg(long, env = "AUDITLAKE_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<u64>,

    /// Request bodies in memory at once, all requests together; a request waits up to 5 s for
    /// room, then gets 503 [default: 128 MiB; at least twice --max-body-bytes].
    #[arg(long, env = "AUDITLAKE_MAX_INFLIGHT_BODY_BYTES")]
    pub max_inflight_body_bytes: Option<u64>,

    /// Webhook connections open at once; more wait in the listen backlog [default: 1024,
    /// lowered to fit the open files limit].
    #[arg(long, env = "AUDITLAKE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// A TLS handshake and a request's headers must arrive within this [default: 10].
    #[arg(long, env = "AUDITLAKE_HEADER_READ_TIMEOUT_SECONDS")]
    pub header_read_timeout_seconds: Option<u64>,

    /// A request must be read and answered within this, else 408 [default: 60].
    #[arg(long, env = "AUDITLAKE_REQUEST_TIMEOUT_SECONDS")]
    pub request_timeout_seconds: Option<u64>,

    /// A connection with no traffic for this long is closed [default: 120].
    #[arg(long, env = "AUDITLAKE_IDLE_TIMEOUT_SECONDS")]
    pub idle_timeout_seconds: Option<u64>,

    /// Longest an accepted event waits before its Parquet file is committed; a commit also
    /// happens once a quarter of --wal-max-bytes is waiting [default: 30].
    #[arg(long, env = "AUDITLAKE_FLUSH_INTERVAL_SECONDS")]
    pub flush_interval_seconds: Option<u64>,

    /// How long a resent event is recognised as a duplicate [default: 600].
    #[arg(long, env = "AUDITLAKE_DEDUP_WINDOW_SECONDS")]
    pub dedup_window_seconds: Option<u64>,

    /// Most event digests kept for duplicate detection [default: 2000000].
    #[arg(long, env = "AUDITLAKE_DEDUP_MAX_EVENTS")]
    pub dedup_max_events: Option<usize>,

    /// How long shutdown waits for requests in flight [default: 25].
    #[arg(long, env = "AUDITLAKE_SHUTDOWN_TIMEOUT_SECONDS")]
    pub shutdown_timeout_seconds: Option<u64>,

    /// Rule files or directories (YAML) added to the built-in pack; same id replaces
    /// (repeat the flag, or separate with commas).
    #[arg(long, env = "AUDITLAKE_RULES", value_delimiter = ',')]
    pub rules: Option<Vec<PathBuf>>,

    /// Where findings go: stdout, a file path, an http(s):// URL (repeatable or comma
    /// separated); `none` turns detection off [default: stdout].
    #[arg(long, env = "AUDITLAKE_FINDINGS", value_delimiter = ',')]
    pub findings: Option<Vec<String>>,

    /// Repeats of a finding (same rule, principal and object; a rule with `fold_by: principal`
    /// ignores the object) within this many seconds are folded into one with a count
    /// [default: 300].
    #[arg(long, env = "AUDITLAKE_FINDINGS_FOLD_WINDOW_SECONDS")]
    pub findings_fold_window_seconds: Option<u64>,

    /// Directory (or file) of RBAC manifests (a GitOps repo, `kubectl get -o yaml` output):
    /// RBAC objects created, changed or deleted away from it are reported as drift.
    #[arg(long, env = "AUDITLAKE_RBAC_BASELINE")]
    pub rbac_baseline: Option<PathBuf>,
}

macro_rules! overlay {
    ($config:ident, $args:ident; $($plain:ident),*; $($optional:ident),*) => {
        $( if let Some(v) = $args.$plain.clone() { $config.$plain = v; } )*
        $( if let Some(v) = $args.$optional.clone() { $config.$optional = Some(v); } )*
    };
}

fn apply(config: &mut ServeConfig, args: &ServeArgs) {
    overlay!(config, args;
        listen, insecure_plain_http, allow_plain_http_beyond_loopback, allow_unauthenticated,
        cluster, cluster_from_client_cert, ops_listen, wal_dir, wal_retarget, wal_max_bytes,
        wal_segment_bytes, max_body_bytes, max_inflight_body_bytes, max_connections,
        header_read_timeout_seconds, request_timeout_seconds, idle_timeout_seconds,
        flush_interval_seconds, dedup_window_seconds, dedup_max_events,
        shutdown_timeout_seconds, rules, findings, findings_fold_window_seconds;
        tls_cert, tls_key, client_ca, bearer_tokens_file, rbac_baseline);
}

/// The `AUDITLAKE_*` variables alone, parsed with the same definitions as the flags.
fn env_only() -> Result<ServeArgs> {
    let command = <ServeArgs as Args>::augment_args(clap::Command::new("serve"));
    let matches = command
        .try_get_matches_from(["serve"])
        .context("reading AUDITLAKE_* environment variables")?;
    ServeArgs::from_arg_matches(&matches).context("reading AUDITLAKE_* environment variables")
}

/// The effective configuration: defaults < config file < flags < environment.
pub fn resolve(flags: &ServeArgs) -> Result<ServeConfig> {
    let env = env_only()?;
    let path = env.config.clone().or_else(|| flags.config.clone());
    let mut config = match &path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading config file {}", p.display()))?;
            toml::from_str::<ServeConfig>(&text)
                .with_context(|| format!("config file {}", p.display()))?
        }
        None => ServeConfig::default(),
    };
    apply(&mut config, flags);
    apply(&mut config, &env);
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("auditlake.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:9000\"\ncluster = \"from-file\"\nwal_max_bytes = 5\n",
        )
        .unwrap();
        let flags = ServeArgs {
            config: Some(file.clone()),
            cluster: Some("from-flag".into()),
            ..Default::default()
        };
        let c = resolve(&flags).unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000");
        assert_eq!(c.cluster, "from-flag");
        assert_eq!(c.wal_max_bytes, 5);
        assert_eq!(c.ops_listen, ServeConfig::default().ops_listen);

        std::fs::write(&file, "listen = \"x\"\nwal_max_byte = 5\n").unwrap();
        let err = format!("{:#}", resolve(&flags).unwrap_err());
        assert!(err.contains("unknown field `wal_max_byte`"), "{err}");
    }

    #[test]
    fn the_shipped_kubernetes_config_file_is_valid() {
        let file = auditlake_fixtures::checkout_dir().join("deploy/kubernetes/auditlake.toml");
        let c = resolve(&ServeArgs {
            config: Some(file),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:8443");
        assert_eq!(c.wal_max_bytes, 8 << 30);
        assert!(c.cluster_from_client_cert);
        assert!(c.client_ca.is_some() && c.bearer_tokens_file.is_some());
    }

    #[test]
    fn the_static_pod_runs_as_its_own_user_and_mounts_only_its_own_files() {
        let file = auditlake_fixtures::checkout_dir().join("deploy/static-pod/auditlake.yaml");
        let pod: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        let spec = &pod["spec"];
        assert_eq!(spec["securityContext"]["runAsUser"], 65532);
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
        let volumes = spec["volumes"].as_sequence().unwrap();
        let paths: Vec<&str> = volumes
            .iter()
            .map(|v| v["hostPath"]["path"].as_str().unwrap())
            .collect();
        assert_eq!(paths, ["/etc/kubernetes/auditlake", "/var/lib/auditlake"]);
        for v in volumes {
            assert_eq!(
                v["hostPath"]["type"], "Directory",
                "created beforehand with the right owner, never by the kubelet as root"
            );
        }
        let container = &spec["containers"][0];
        let args: Vec<&str> = container["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(args[0], "serve");
        let command = <ServeArgs as Args>::augment_args(clap::Command::new("serve"));
        let matches = command.try_get_matches_from(&args).unwrap();
        let flags = ServeArgs::from_arg_matches(&matches).unwrap();
        let config = resolve(&flags).unwrap();
        assert!(
            config.client_ca.is_some(),
            "client authentication is required"
        );
        for path in [&config.tls_cert, &config.tls_key, &config.client_ca] {
            let p = path.as_ref().unwrap();
            assert!(p.starts_with("/etc/auditlake/tls"), "{}", p.display());
        }
        assert!(config.wal_dir.starts_with("/var/lib/auditlake"));
    }
}
