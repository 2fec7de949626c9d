//! `auditlake serve`: flags, the TOML config file, and the order in which they apply.
//!
//! Every key of the config file is a flag and an `AUDITLAKE_*` variable, all made from the
//! one definition of each key in `auditlake_ingest::SERVE_KEYS`. A key set in more than one
//! place takes, from strongest to weakest: the flag, the environment variable, the config
//! file, the built-in default (clap's, Vector's and kafka-delta-ingest's order).

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use auditlake_ingest::{KeyShape, SERVE_KEYS, ServeConfig};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};

/// Flags of `auditlake serve`: `--config`, `--print-config`, and one flag per config key.
#[derive(Debug, Default, Clone)]
pub struct ServeArgs {
    /// TOML config file with any of the keys (unknown keys are an error).
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    pub print_config: bool,
    /// The keys given as flags or environment variables, with their values.
    pub given: Vec<(&'static str, Vec<String>)>,
}

impl FromArgMatches for ServeArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = Self {
            config: m.get_one::<PathBuf>("config").cloned(),
            print_config: m.get_flag("print_config"),
            given: Vec::new(),
        };
        for key in SERVE_KEYS {
            let from_user = matches!(
                m.value_source(key.name),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            );
            if let (true, Some(values)) = (from_user, m.get_many::<String>(key.name)) {
                args.given.push((key.name, values.cloned().collect()));
            }
        }
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for ServeArgs {
    fn augment_args(cmd: Command) -> Command {
        let mut cmd = cmd
            .arg(
                Arg::new("config")
                    .long("config")
                    .env("AUDITLAKE_CONFIG")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help("TOML config file with any of the keys below (unknown keys are an error)"),
            )
            .arg(
                Arg::new("print_config")
                    .long("print-config")
                    .action(ArgAction::SetTrue)
                    .help("Print the effective configuration (defaults, file, environment and flags applied) as TOML and exit"),
            );
        for key in SERVE_KEYS {
            let help = key.help.trim().replace('\n', " ");
            let help = match ServeConfig::default_text(key.name) {
                Some(d) => format!("{help} [default: {d}]"),
                None => help,
            };
            let mut arg = Arg::new(key.name)
                .long(key.flag())
                .env(key.env())
                .help(help)
                .value_name(key.name.to_ascii_uppercase());
            arg = match key.shape {
                KeyShape::Single => arg.num_args(1),
                KeyShape::Switch => arg
                    .num_args(0..=1)
                    .require_equals(true)
                    .default_missing_value("true"),
                KeyShape::List => arg.action(ArgAction::Append).value_delimiter(','),
                KeyShape::Pairs => arg.action(ArgAction::Append),
            };
            cmd = cmd.arg(arg);
        }
        cmd
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

/// The effective configuration: defaults < config file < environment < flags.
pub fn resolve(args: &ServeArgs) -> Result<ServeConfig> {
    let mut config = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading config file {}", p.display()))?;
            toml::from_str::<ServeConfig>(&text)
                .with_context(|| format!("config file {}", p.display()))?
        }
        None => ServeConfig::default(),
    };
    for (name, values) in &args.given {
        config.set(name, values).map_err(|e| anyhow!(e))?;
    }
    Ok(config)
}

/// The configuration as the TOML a config file would hold.
pub fn to_toml(config: &ServeConfig) -> Result<String> {
    toml::to_string(config).context("printing the configuration")
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
            given: vec![("cluster", vec!["from-flag".into()])],
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
    fn the_managed_cluster_guides_configs_are_valid_and_turn_on_their_receivers() {
        let dir = auditlake_fixtures::checkout_dir().join("deploy/managed");
        let load = |name: &str| {
            resolve(&ServeArgs {
                config: Some(dir.join(name)),
                ..Default::default()
            })
            .unwrap()
        };
        let eks = load("eks-firehose.toml");
        assert!(eks.firehose_access_key_file.is_some() && eks.client_ca.is_none());
        assert!(eks.max_inflight_body_bytes >= 2 * eks.max_body_bytes);
        let gke = load("gke-pubsub.toml");
        assert!(gke.pubsub_jwks_file.is_some() && !gke.pubsub_audience.is_empty());
        let aks = load("aks-event-hubs.toml");
        assert_eq!(
            aks.kafka.get("sasl.mechanism").map(String::as_str),
            Some("PLAIN")
        );
        assert_eq!(aks.kafka_topic, ["aks-audit"]);
    }

    #[test]
    fn the_scale_out_variant_has_kafka_receivers_and_archivers_whose_secret_adds_to_the_file() {
        let dir = auditlake_fixtures::checkout_dir().join("deploy/kubernetes/scale-out");
        let load = |name: &str, env: Vec<(&'static str, Vec<String>)>| {
            resolve(&ServeArgs {
                config: Some(dir.join(name)),
                given: env,
                ..Default::default()
            })
            .unwrap()
        };
        let secret = vec![("kafka", vec!["sasl.password=s3cret".to_string()])];
        let receiver = load("receiver.toml", secret.clone());
        assert!(receiver.durable_log.starts_with("kafka://"));
        assert!(
            receiver.client_ca.is_some(),
            "receivers authenticate the apiservers"
        );
        assert_eq!(receiver.kafka["sasl.password"], "s3cret");
        assert_eq!(
            receiver.kafka["security.protocol"], "SASL_SSL",
            "the Secret's option adds to the file's table"
        );
        let archiver = load("archiver.toml", secret);
        assert!(!archiver.kafka_brokers.is_empty() && archiver.durable_log == "wal");
        assert_eq!(
            receiver.durable_log.trim_start_matches("kafka://"),
            format!("{}/{}", archiver.kafka_brokers, archiver.kafka_topic[0]),
            "the archivers read the topic the receivers write"
        );
        let kafka_env = SERVE_KEYS.iter().find(|k| k.name == "kafka").unwrap().env();
        for f in ["receivers.yaml", "archivers.yaml"] {
            let text = std::fs::read_to_string(dir.join(f)).unwrap();
            assert!(text.contains(&kafka_env), "{f} sets {kafka_env}");
        }
        let kubeconfig = std::fs::read_to_string(
            auditlake_fixtures::checkout_dir()
                .join("deploy/apiserver/audit-webhook-kubeconfig-scale-out.yaml"),
        )
        .unwrap();
        assert!(kubeconfig.contains("server: https://auditlake-receiver."));
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
