//! Every setting of `auditlake serve`, defined once: each key's name (the TOML key, the flag
//! `--<name with dashes>`, the variable `AUDITLAKE_<NAME>`), type, default and help text
//! come from one line of [`serve_config!`]. The binary builds its flags from [`SERVE_KEYS`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How a key's value is written on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyShape {
    /// One value.
    Single,
    /// A switch: `--name` alone means true; `--name=false` is accepted.
    Switch,
    /// A list: the flag repeated, or values separated by commas.
    List,
    /// `key=value` pairs, the flag repeated (values may hold commas); a TOML table.
    Pairs,
}

/// A type a key can have: parsed from its text form, shown as its default.
pub trait KeyValue: Sized {
    /// How it is written on the command line.
    const SHAPE: KeyShape;
    /// Parses the values given for the key (one, or several for a list).
    fn parse(values: &[String]) -> Result<Self, String>;
    /// The value as text, for `--help` (`None`: no default worth showing).
    fn show(&self) -> Option<String>;
    /// Sets the key from `values` given over an earlier layer (the config file): replaces
    /// it, except that a table's entries are added to (and override) the file's.
    fn apply(&mut self, values: &[String]) -> Result<(), String> {
        *self = Self::parse(values)?;
        Ok(())
    }
}

fn one(values: &[String]) -> Result<&str, String> {
    match values {
        [v] => Ok(v),
        _ => Err(format!("expected one value, got {}", values.len())),
    }
}

impl KeyValue for String {
    const SHAPE: KeyShape = KeyShape::Single;
    fn parse(values: &[String]) -> Result<Self, String> {
        one(values).map(str::to_string)
    }
    fn show(&self) -> Option<String> {
        Some(self.clone())
    }
}

impl KeyValue for PathBuf {
    const SHAPE: KeyShape = KeyShape::Single;
    fn parse(values: &[String]) -> Result<Self, String> {
        one(values).map(PathBuf::from)
    }
    fn show(&self) -> Option<String> {
        Some(self.display().to_string())
    }
}

impl KeyValue for Option<PathBuf> {
    const SHAPE: KeyShape = KeyShape::Single;
    fn parse(values: &[String]) -> Result<Self, String> {
        one(values).map(|v| Some(PathBuf::from(v)))
    }
    fn show(&self) -> Option<String> {
        self.as_ref().map(|p| p.display().to_string())
    }
}

impl KeyValue for Option<String> {
    const SHAPE: KeyShape = KeyShape::Single;
    fn parse(values: &[String]) -> Result<Self, String> {
        one(values).map(|v| Some(v.to_string()))
    }
    fn show(&self) -> Option<String> {
        self.clone()
    }
}

impl KeyValue for bool {
    const SHAPE: KeyShape = KeyShape::Switch;
    fn parse(values: &[String]) -> Result<Self, String> {
        match one(values)?.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            other => Err(format!("{other:?} is not true or false")),
        }
    }
    fn show(&self) -> Option<String> {
        None
    }
}

macro_rules! numeric_key {
    ($($t:ty),*) => {$(
        impl KeyValue for $t {
            const SHAPE: KeyShape = KeyShape::Single;
            fn parse(values: &[String]) -> Result<Self, String> {
                let v = one(values)?;
                v.trim().parse().map_err(|_| format!("{v:?} is not a whole number"))
            }
            fn show(&self) -> Option<String> {
                Some(self.to_string())
            }
        }
    )*};
}
numeric_key!(u64, usize);

impl KeyValue for Vec<String> {
    const SHAPE: KeyShape = KeyShape::List;
    fn parse(values: &[String]) -> Result<Self, String> {
        Ok(values.to_vec())
    }
    fn show(&self) -> Option<String> {
        (!self.is_empty()).then(|| self.join(","))
    }
}

impl KeyValue for Vec<PathBuf> {
    const SHAPE: KeyShape = KeyShape::List;
    fn parse(values: &[String]) -> Result<Self, String> {
        Ok(values.iter().map(PathBuf::from).collect())
    }
    fn show(&self) -> Option<String> {
        (!self.is_empty()).then(|| {
            self.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
    }
}

impl KeyValue for std::collections::BTreeMap<String, String> {
    const SHAPE: KeyShape = KeyShape::Pairs;
    fn parse(values: &[String]) -> Result<Self, String> {
        values
            .iter()
            .map(|v| match v.split_once('=') {
                Some((k, val)) if !k.trim().is_empty() => {
                    Ok((k.trim().to_string(), val.to_string()))
                }
                _ => Err(format!("{v:?} is not key=value")),
            })
            .collect()
    }
    fn apply(&mut self, values: &[String]) -> Result<(), String> {
        self.extend(Self::parse(values)?);
        Ok(())
    }
    fn show(&self) -> Option<String> {
        (!self.is_empty()).then(|| {
            self.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
    }
}

/// One key of [`ServeConfig`], for building flags and help.
#[derive(Debug, Clone, Copy)]
pub struct ServeKey {
    /// The TOML key; the flag is `--` and this with `-` for `_`; the variable is
    /// `AUDITLAKE_` and this in capitals.
    pub name: &'static str,
    /// Help text (the doc comment of the key).
    pub help: &'static str,
    /// How it is written on the command line.
    pub shape: KeyShape,
}

impl ServeKey {
    /// The command-line flag, without the leading `--`. The `[kafka]` table of librdkafka
    /// properties is given one property at a time, as `--kafka-option key=value`.
    pub fn flag(&self) -> String {
        match self.name {
            "kafka" => "kafka-option".into(),
            name => name.replace('_', "-"),
        }
    }

    /// The environment variable (the flag in capitals).
    pub fn env(&self) -> String {
        format!(
            "AUDITLAKE_{}",
            self.flag().replace('-', "_").to_ascii_uppercase()
        )
    }
}

macro_rules! serve_config {
    ($( $(#[doc = $doc:literal])+ $name:ident : $ty:ty = $default:expr; )*) => {
        /// Every setting of `auditlake serve`; the TOML config file has exactly these keys.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct ServeConfig {
            $( $(#[doc = $doc])+ pub $name: $ty, )*
        }

        impl Default for ServeConfig {
            fn default() -> Self {
                Self { $( $name: $default, )* }
            }
        }

        /// The keys of [`ServeConfig`], in the order of the config file's documentation.
        pub const SERVE_KEYS: &[ServeKey] = &[
            $( ServeKey {
                name: stringify!($name),
                help: concat!($($doc),+),
                shape: <$ty as KeyValue>::SHAPE,
            }, )*
        ];

        impl ServeConfig {
            /// Sets key `name` from the text given for it on the command line or in its
            /// environment variable.
            pub fn set(&mut self, name: &str, values: &[String]) -> Result<(), String> {
                match name {
                    $( stringify!($name) => {
                        <$ty as KeyValue>::apply(&mut self.$name, values)
                            .map_err(|e| format!("--{}: {e}", name.replace('_', "-")))?;
                    } )*
                    other => return Err(format!("unknown setting {other:?}")),
                }
                Ok(())
            }

            /// The librdkafka properties `kafka` plus `pairs` (`key=value` each).
            pub fn with_kafka_options(
                &self,
                pairs: &[String],
            ) -> Result<std::collections::BTreeMap<String, String>, String> {
                let mut out = self.kafka.clone();
                out.extend(
                    <std::collections::BTreeMap<String, String> as KeyValue>::parse(pairs)
                        .map_err(|e| format!("--kafka-option: {e}"))?,
                );
                Ok(out)
            }

            /// The built-in default of key `name` as text, for `--help`.
            pub fn default_text(name: &str) -> Option<String> {
                let d = Self::default();
                match name {
                    $( stringify!($name) => <$ty as KeyValue>::show(&d.$name), )*
                    _ => None,
                }
            }
        }
    };
}

serve_config! {
    /// Address the webhook listens on.
    listen: String = "127.0.0.1:8443".into();
    /// Server certificate chain (PEM). Required unless `insecure_plain_http`.
    tls_cert: Option<PathBuf> = None;
    /// Server private key (PEM).
    tls_key: Option<PathBuf> = None;
    /// CA of the apiserver's client certificates (PEM): turns on mutual TLS; requests
    /// without a certificate are refused in the handshake.
    client_ca: Option<PathBuf> = None;
    /// Serve plain HTTP without TLS: loopback addresses only (tests and demos), unless
    /// `allow_plain_http_beyond_loopback`.
    insecure_plain_http: bool = false;
    /// Allow plain HTTP on an address other than loopback: events and tokens then cross the
    /// network unencrypted.
    allow_plain_http_beyond_loopback: bool = false;
    /// Start without client authentication (no client CA, no bearer tokens file): anyone
    /// who reaches the port can add events. Refused otherwise.
    allow_unauthenticated: bool = false;
    /// File of accepted bearer tokens: `<token> [<name>] [clusters=a,b]` per line (tokens
    /// of at least 20 characters; the name is recorded as the sender; a token naming
    /// clusters may post only those). Reloaded on SIGHUP and when the file changes, like
    /// the certificates.
    bearer_tokens_file: Option<PathBuf> = None;
    /// File holding the access key configured on an Amazon Data Firehose delivery stream
    /// (sent as `X-Amz-Firehose-Access-Key`): turns on `POST /firehose` and
    /// `/firehose/{cluster}` (EKS audit logs through a CloudWatch Logs subscription).
    firehose_access_key_file: Option<PathBuf> = None;
    /// JWKS file of the keys Google signs Pub/Sub push tokens with (saved from
    /// https://www.googleapis.com/oauth2/v3/certs): turns on `POST /pubsub/push` and
    /// `/pubsub/push/{cluster}` with OIDC authentication; needs `pubsub_audience`.
    pubsub_jwks_file: Option<PathBuf> = None;
    /// Audience of the push subscription's OIDC tokens (as set on the subscription).
    pubsub_audience: String = String::new();
    /// E-mail of the push subscription's service account; tokens of any other are
    /// refused. Empty: any Google-signed token for the audience.
    pubsub_service_account: String = String::new();
    /// File holding a shared token Pub/Sub push requests carry in the endpoint's `token`
    /// query parameter: turns on `POST /pubsub/push` without OIDC (prefer OIDC).
    pubsub_token_file: Option<PathBuf> = None;
    /// How request bodies and Kafka messages are wrapped: `auto` recognises each by its
    /// shape (plain events, EKS, GKE and AKS envelopes, shippers; see
    /// schemas/ENVELOPES.md); a format name (`azure_diagnostic`, `cloudwatch_subscription`,
    /// `gke_log_entry`, `event`, ...) decodes every one as that and quarantines the rest.
    envelope: String = "auto".into();
    /// Cluster of events posted to /audit/webhook; /audit/webhook/{cluster} overrides it.
    cluster: String = "default".into();
    /// The client certificate's common name is the cluster: a request whose path names
    /// another cluster is refused with 403.
    cluster_from_client_cert: bool = false;
    /// Address of /healthz, /readyz and /metrics (plain HTTP, no credentials).
    ops_listen: String = "127.0.0.1:9464".into();
    /// Where an accepted body is made durable before the 200: `wal` (the local write-ahead
    /// log in `wal_dir`, archived by this server) or `kafka://host:port[,host:port]/topic`
    /// (answered once Kafka acknowledged it, acks=all; members running with
    /// `kafka_brokers` archive the topic, so receivers keep no state).
    durable_log: String = "wal".into();
    /// Write-ahead log directory on local disk; keep it across restarts. It records the
    /// archive it feeds and refuses to replay into another.
    wal_dir: PathBuf = PathBuf::from("auditlake-wal");
    /// Archive the write-ahead log's records into the archive although the log was written
    /// for another archive (after moving an archive, say).
    wal_retarget: bool = false;
    /// Answer 429 (Retry-After) once the write-ahead log holds this many bytes.
    wal_max_bytes: u64 = 1 << 30;
    /// Write-ahead log segment size in bytes.
    wal_segment_bytes: u64 = 64 << 20;
    /// Largest request body in bytes, compressed and decompressed; larger gets 413.
    max_body_bytes: u64 = 16 << 20;
    /// Request bodies in memory at once, all requests together, in bytes; a request waits
    /// up to 5 s for room, then gets 503. At least twice `max_body_bytes`.
    max_inflight_body_bytes: u64 = 128 << 20;
    /// Webhook connections open at once; more wait in the listen backlog (lowered to fit
    /// the open files limit).
    max_connections: usize = 1024;
    /// A TLS handshake and a request's headers must arrive within this many seconds.
    header_read_timeout_seconds: u64 = 10;
    /// A request must be read and answered within this many seconds, else 408.
    request_timeout_seconds: u64 = 60;
    /// A connection with no traffic for this many seconds is closed.
    idle_timeout_seconds: u64 = 120;
    /// Longest an accepted event waits before its Parquet file is committed, in seconds; a
    /// commit also happens once a quarter of `wal_max_bytes` is waiting.
    flush_interval_seconds: u64 = 30;
    /// Every this many seconds, busy or idle, write a heartbeat record (no files; the
    /// source's position and clusters), so that silence is attested in the signed log and
    /// `auditlake evidence` can tell a quiet hour from a gap; 0 turns heartbeats off.
    heartbeat_interval_seconds: u64 = 60;
    /// The apiserver's metrics endpoint (`https://<apiserver>/metrics`): each heartbeat
    /// records its `apiserver_audit_event_total` and `apiserver_audit_error_total` for
    /// `cluster`, so the evidence report reconciles counts and shows audit failures.
    /// Needs heartbeats.
    apiserver_metrics_url: Option<String> = None;
    /// Bearer token file for `apiserver_metrics_url` (read at each scrape; a service
    /// account allowed `get` on the non-resource URL `/metrics`).
    apiserver_metrics_token_file: Option<PathBuf> = None;
    /// CA bundle (PEM) that signs the apiserver's certificate, besides the system's roots.
    apiserver_metrics_ca_file: Option<PathBuf> = None;
    /// How long a resent event is recognised as a duplicate, in seconds (the apiserver
    /// retries for minutes).
    dedup_window_seconds: u64 = 600;
    /// Most event digests kept for duplicate detection.
    dedup_max_events: usize = 2_000_000;
    /// How long shutdown waits for requests in flight, in seconds.
    shutdown_timeout_seconds: u64 = 25;
    /// Rule files or directories (YAML) added to the built-in pack; same id replaces.
    rules: Vec<PathBuf> = Vec::new();
    /// Where findings go: stdout, a file path, an http(s):// URL, kafka://host:port/topic
    /// (keyed by rule and principal); `none` turns detection
    /// off.
    findings: Vec<String> = vec!["stdout".into()];
    /// Repeats of a finding (same rule, principal and object; a rule with `fold_by:
    /// principal` ignores the object) within this many seconds are folded into one with a
    /// count.
    findings_fold_window_seconds: u64 = 300;
    /// Directory (or file) of RBAC manifests (a GitOps repo, `kubectl get -o yaml` output):
    /// RBAC objects created, changed or deleted away from it are reported as drift.
    rbac_baseline: Option<PathBuf> = None;
    /// The archive's signing key (`auditlake keys generate`): every commit becomes a leaf
    /// of the signed log with a checkpoint signed by it (archive/FORMAT.md §7).
    signing_key: Option<PathBuf> = None;
    /// Witness keys (`auditlake keys generate --witness`) held by someone else, whose
    /// cosignatures are added to every checkpoint; needs `signing_key`.
    witness_key: Vec<PathBuf> = Vec::new();
    /// Kafka bootstrap brokers (`host:port,...`): `serve` then archives the topics of
    /// `kafka_topic` as a member of consumer group `kafka_group` instead of serving the
    /// webhook (the operations port stays).
    kafka_brokers: String = String::new();
    /// Topics to archive (repeat the flag, or separate with commas).
    kafka_topic: Vec<String> = Vec::new();
    /// Consumer group; members of one group share the partitions, and the archive (not the
    /// group's committed offsets) says where each partition resumes.
    kafka_group: String = "auditlake".into();
    /// librdkafka properties, `key=value` (a `[kafka]` table in the config file): TLS,
    /// SASL (`sasl.mechanism=SCRAM-SHA-512`, `PLAIN` for Event Hubs, `OAUTHBEARER`),
    /// timeouts; see the README for examples.
    kafka: std::collections::BTreeMap<String, String> = Default::default();
    /// Message header naming a message's cluster; without it the topic's entry in
    /// `kafka_topic_cluster`, then `cluster`. Empty: headers are not read.
    kafka_cluster_header: String = "cluster".into();
    /// Cluster of each topic, `topic=cluster` (a `[kafka_topic_cluster]` table).
    kafka_topic_cluster: std::collections::BTreeMap<String, String> = Default::default();
    /// A Kafka member's commit holds one partition's messages, at most this many; with
    /// `kafka_commit_bytes` and `flush_interval_seconds` (measured on the messages'
    /// timestamps) this decides where commits end, so a replay cuts the same files.
    kafka_commit_messages: u64 = 100_000;
    /// A Kafka member's commit ends once its messages' values reach this many bytes.
    kafka_commit_bytes: u64 = 16 << 20;
    /// Bytes of Kafka messages a member buffers over all its partitions; beyond it the
    /// largest partition's commit is cut early (counted in `kafka_commit_cuts{reason=
    /// "pressure"}`). Keep it above partitions held x `kafka_commit_bytes`.
    kafka_buffer_bytes: u64 = 256 << 20;
    /// Topic that quarantined Kafka messages are also sent to once archived, with the
    /// reason in headers (empty: none). The archive's quarantine keeps them either way.
    kafka_dead_letter_topic: String = String::new();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_settable_by_name_and_has_help() {
        let mut c = ServeConfig::default();
        for k in SERVE_KEYS {
            assert!(!k.help.trim().is_empty(), "{} has no help", k.name);
            let value = match k.shape {
                KeyShape::Switch => "true",
                _ if k.name.ends_with("_bytes")
                    || k.name.ends_with("_seconds")
                    || k.name.ends_with("_events")
                    || k.name.ends_with("_messages")
                    || k.name.ends_with("_connections") =>
                {
                    "7"
                }
                _ => "x",
            };
            let value = if k.shape == KeyShape::Pairs {
                "a=b"
            } else {
                value
            };
            c.set(k.name, &[value.to_string()]).unwrap();
        }
        assert_eq!(c.wal_max_bytes, 7);
        assert!(c.wal_retarget);
        assert_eq!(c.findings, ["x"]);
        assert!(c.set("wal_max_bytes", &["lots".into()]).is_err());
        assert!(c.set("no_such_key", &["1".into()]).is_err());
        assert_eq!(
            ServeConfig::default_text("wal_max_bytes").as_deref(),
            Some("1073741824")
        );
        assert_eq!(SERVE_KEYS[0].env(), "AUDITLAKE_LISTEN");
        assert_eq!(SERVE_KEYS[1].flag(), "tls-cert");
        assert_eq!(c.kafka["a"], "b");
        assert!(c.set("kafka", &["no-equals".into()]).is_err());
        let kafka = SERVE_KEYS.iter().find(|k| k.name == "kafka").unwrap();
        assert_eq!(
            (kafka.flag().as_str(), kafka.env().as_str()),
            ("kafka-option", "AUDITLAKE_KAFKA_OPTION")
        );
    }
}
