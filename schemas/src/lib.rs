//! The Arrow schemas of auditlake and the simd-json decoder that fills them.
//!
//! Everything downstream (archive writer, detectors, SQL) sees one events schema:
//! [`events_schema`]. [`EventDecoder`] turns Kubernetes audit events (NDJSON, a single
//! Event, an `EventList`) into record batches of it and quarantines what it cannot decode.

mod byte_layers;
mod decoder;
pub mod der;
mod derived_tables;
mod envelope;
mod event_builder;
mod event_mapping;
mod events_schema;
mod gke_mapping;
mod large_document;
mod tape_span;
pub mod timestamp;

pub use decoder::{DecoderOptions, EventDecoder, Quarantined, SourcePos};
pub use derived_tables::{findings_file_schema, rbac_history_file_schema};
pub use envelope::{Envelope, Skipped, json_syntax_error, lines};
pub use event_builder::EventBatchBuilder;
pub use events_schema::{
    PARTITION_COLUMNS, SCHEMA_VERSION, SCHEMA_VERSION_KEY, col, events_file_schema, events_schema,
};
pub use gke_mapping::GKE_UNKNOWN_FIELDS;
