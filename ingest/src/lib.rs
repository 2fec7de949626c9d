//! Sources, batching and the Parquet evidence archive of auditlake.
//!
//! Sources: files (`file_source`, [`ingest`]), the apiserver's audit webhook ([`serve`]:
//! HTTPS -> fsynced write-ahead log -> archiver) and Kafka consumer groups
//! ([`consume_kafka`]). Data flows `file_source` -> decoder (in `auditlake-schema`) -> [`PartitionedWriter`]
//! (Parquet per `cluster=/date=/hour=`) -> [`Archive::commit`] (data files, quarantine,
//! then a hash-chained manifest record written create-if-absent).

mod apiserver_metrics;
mod archive_health;
mod archiver;
mod bearer_tokens;
mod committer;
mod credentials;
mod dedup;
mod detection_thread;
mod error;
mod file_source;
mod firehose_http;
mod http_connections;
#[cfg(feature = "kafka")]
mod kafka_dead_letter;
#[cfg(feature = "kafka")]
mod kafka_log;
#[cfg(feature = "kafka")]
mod kafka_member;
mod kafka_metrics;
#[cfg(feature = "kafka")]
mod kafka_produce;
mod observer;
mod oidc;
mod partitioned_writer;
mod pipeline;
mod pubsub_push;
mod record_attempts;
mod serve;
mod serve_config;
mod serve_metrics;
pub mod sources;
pub mod telemetry;
mod thread_priority;
mod tls;
pub mod wal;
mod webhook;

pub use auditlake_archive::{Archive, ArchiveError, ArchiveLocation, CommitContents};
pub use auditlake_archive::{FinishedFile, cluster_name_error, partition_of};
pub use bearer_tokens::{BearerTokens, MIN_TOKEN_CHARS};
pub use error::IngestError;
pub use file_source::{Input, InputReader};
#[cfg(feature = "kafka")]
pub use kafka_log::KafkaTarget;
#[cfg(feature = "kafka")]
pub use kafka_member::{consume_kafka, kafka_source_options};
#[cfg(feature = "kafka")]
pub use kafka_produce::{ProduceOptions, ProduceSummary, produce};
pub use observer::{BatchObserver, ObserverCounter};
pub use partitioned_writer::{ArrivalWindow, PartitionedWriter, WriterOptions};
pub use pipeline::{IngestOptions, IngestSummary, ingest, new_writer_id};
pub use serve::{Bound, ServeError, ServeSummary, serve};
pub use serve_config::{KeyShape, KeyValue, SERVE_KEYS, ServeConfig, ServeKey};
pub use serve_metrics::ServeMetrics;
pub use tls::{TlsError, certificate_identity, server_config};
