//! The Arrow schema of the `events` table: one row per Kubernetes audit event.

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Version of the events schema; bumped whenever a column is added, removed or retyped.
/// Written into every Parquet file's metadata and every manifest record.
pub const SCHEMA_VERSION: u32 = 2;

/// Parquet/Arrow metadata key holding [`SCHEMA_VERSION`].
pub const SCHEMA_VERSION_KEY: &str = "auditlake.schema_version";

/// Names of the columns of the events schema, in schema order.
pub mod col {
    /// Cluster the event came from (source config, webhook path, Kafka header).
    pub const CLUSTER: &str = "cluster";
    /// `apiVersion` of the event itself (`audit.k8s.io/v1`, `audit.k8s.io/v1beta1`).
    pub const EVENT_API_VERSION: &str = "event_api_version";
    /// `auditID`.
    pub const AUDIT_ID: &str = "audit_id";
    /// `stage`: RequestReceived, ResponseStarted, ResponseComplete, Panic.
    pub const STAGE: &str = "stage";
    /// `level`: Metadata, Request, RequestResponse.
    pub const LEVEL: &str = "level";
    /// `verb`.
    pub const VERB: &str = "verb";
    /// `requestURI`.
    pub const REQUEST_URI: &str = "request_uri";
    /// `user.username`.
    pub const USER_USERNAME: &str = "user_username";
    /// `user.uid`.
    pub const USER_UID: &str = "user_uid";
    /// `user.groups`.
    pub const USER_GROUPS: &str = "user_groups";
    /// `user.extra` as JSON text.
    pub const USER_EXTRA: &str = "user_extra";
    /// `impersonatedUser.username`.
    pub const IMPERSONATED_USERNAME: &str = "impersonated_username";
    /// `impersonatedUser.uid`.
    pub const IMPERSONATED_UID: &str = "impersonated_uid";
    /// `impersonatedUser.groups`.
    pub const IMPERSONATED_GROUPS: &str = "impersonated_groups";
    /// `impersonatedUser.extra` as JSON text.
    pub const IMPERSONATED_EXTRA: &str = "impersonated_extra";
    /// `sourceIPs` (only the last entry can be trusted).
    pub const SOURCE_IPS: &str = "source_ips";
    /// `userAgent` (client supplied, not trustworthy).
    pub const USER_AGENT: &str = "user_agent";
    /// `objectRef.resource`.
    pub const RESOURCE: &str = "resource";
    /// `objectRef.subresource`.
    pub const SUBRESOURCE: &str = "subresource";
    /// `objectRef.namespace`.
    pub const NAMESPACE: &str = "namespace";
    /// `objectRef.name`.
    pub const NAME: &str = "name";
    /// `objectRef.uid`.
    pub const OBJECT_UID: &str = "object_uid";
    /// `objectRef.apiGroup`.
    pub const API_GROUP: &str = "api_group";
    /// `objectRef.apiVersion`.
    pub const API_VERSION: &str = "api_version";
    /// `objectRef.resourceVersion`.
    pub const RESOURCE_VERSION: &str = "resource_version";
    /// `responseStatus.code`.
    pub const RESPONSE_CODE: &str = "response_code";
    /// `responseStatus.status` (Success / Failure).
    pub const RESPONSE_STATUS: &str = "response_status";
    /// `responseStatus.reason`.
    pub const RESPONSE_REASON: &str = "response_reason";
    /// `responseStatus.message`.
    pub const RESPONSE_MESSAGE: &str = "response_message";
    /// `responseStatus.details` as JSON text.
    pub const RESPONSE_DETAILS: &str = "response_details";
    /// Annotation `authorization.k8s.io/decision`.
    pub const AUTHZ_DECISION: &str = "authz_decision";
    /// Annotation `authorization.k8s.io/reason`.
    pub const AUTHZ_REASON: &str = "authz_reason";
    /// All `annotations` as a JSON object.
    pub const ANNOTATIONS: &str = "annotations";
    /// `requestObject` as JSON text.
    pub const REQUEST_OBJECT: &str = "request_object";
    /// `responseObject` as JSON text.
    pub const RESPONSE_OBJECT: &str = "response_object";
    /// `requestReceivedTimestamp` (v1beta1: `timestamp` when absent).
    pub const REQUEST_RECEIVED_AT: &str = "request_received_at";
    /// `stageTimestamp`.
    pub const STAGE_AT: &str = "stage_at";
    /// When auditlake received the event.
    pub const INGESTED_AT: &str = "ingested_at";
    /// Where the event came from: `file:line`, topic/partition/offset, WAL sequence.
    pub const SOURCE_REF: &str = "source_ref";
    /// Every field not mapped to a column, as a JSON object keyed by its dotted path.
    pub const UNMAPPED: &str = "unmapped";
    /// The envelope the event arrived in (managed clusters' logs, shippers), as a JSON
    /// object: its `format` and the metadata a user filters on (account, project or
    /// subscription, log group and stream, insert id, category; see `schemas/ENVELOPES.md`).
    /// Null for an event that came bare. Added in schema version 2.
    pub const ENVELOPE: &str = "envelope";
}

fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

fn utf8_list(name: &str) -> Field {
    Field::new(
        name,
        DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
        true,
    )
}

fn timestamp(name: &str, nullable: bool) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        nullable,
    )
}

static EVENTS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let fields = vec![
        Field::new(col::CLUSTER, DataType::Utf8, false),
        utf8(col::EVENT_API_VERSION),
        Field::new(col::AUDIT_ID, DataType::Utf8, false),
        utf8(col::STAGE),
        utf8(col::LEVEL),
        utf8(col::VERB),
        utf8(col::REQUEST_URI),
        utf8(col::USER_USERNAME),
        utf8(col::USER_UID),
        utf8_list(col::USER_GROUPS),
        utf8(col::USER_EXTRA),
        utf8(col::IMPERSONATED_USERNAME),
        utf8(col::IMPERSONATED_UID),
        utf8_list(col::IMPERSONATED_GROUPS),
        utf8(col::IMPERSONATED_EXTRA),
        utf8_list(col::SOURCE_IPS),
        utf8(col::USER_AGENT),
        utf8(col::RESOURCE),
        utf8(col::SUBRESOURCE),
        utf8(col::NAMESPACE),
        utf8(col::NAME),
        utf8(col::OBJECT_UID),
        utf8(col::API_GROUP),
        utf8(col::API_VERSION),
        utf8(col::RESOURCE_VERSION),
        Field::new(col::RESPONSE_CODE, DataType::Int32, true),
        utf8(col::RESPONSE_STATUS),
        utf8(col::RESPONSE_REASON),
        utf8(col::RESPONSE_MESSAGE),
        utf8(col::RESPONSE_DETAILS),
        utf8(col::AUTHZ_DECISION),
        utf8(col::AUTHZ_REASON),
        utf8(col::ANNOTATIONS),
        utf8(col::REQUEST_OBJECT),
        utf8(col::RESPONSE_OBJECT),
        timestamp(col::REQUEST_RECEIVED_AT, false),
        timestamp(col::STAGE_AT, false),
        timestamp(col::INGESTED_AT, false),
        utf8(col::SOURCE_REF),
        utf8(col::UNMAPPED),
        utf8(col::ENVELOPE),
    ];
    let metadata = [(SCHEMA_VERSION_KEY.to_string(), SCHEMA_VERSION.to_string())].into();
    Arc::new(Schema::new_with_metadata(fields, metadata))
});

/// The events schema as decoded: every column, `cluster` included.
pub fn events_schema() -> SchemaRef {
    EVENTS_SCHEMA.clone()
}

/// The columns stored inside Parquet files: the events schema without `cluster`,
/// which lives in the Hive partition path (`cluster=.../date=.../hour=...`).
pub fn events_file_schema() -> SchemaRef {
    static FILE_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        let full = events_schema();
        let fields: Vec<Field> = full
            .fields()
            .iter()
            .filter(|f| f.name() != col::CLUSTER)
            .map(|f| f.as_ref().clone())
            .collect();
        Arc::new(Schema::new_with_metadata(fields, full.metadata().clone()))
    });
    FILE_SCHEMA.clone()
}

/// Names of the Hive partition columns, outermost first.
pub const PARTITION_COLUMNS: [&str; 3] = [col::CLUSTER, "date", "hour"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_schema_is_events_schema_without_cluster() {
        let full = events_schema();
        let file = events_file_schema();
        assert_eq!(file.fields().len() + 1, full.fields().len());
        assert!(file.field_with_name(col::CLUSTER).is_err());
        assert_eq!(
            file.metadata().get(SCHEMA_VERSION_KEY).map(String::as_str),
            Some("2")
        );
    }
}
