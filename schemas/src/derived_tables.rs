//! Arrow schemas of the tables the detectors add to the archive: `findings` (every finding
//! emitted) and `rbac_history` (every RBAC object version the drift detector rebuilt, from
//! which the `rbac_state` view answers "who was bound to what at time T").
//!
//! Both are partitioned like events, by `cluster=` and `date=` directories, so those two
//! columns are not in the files.

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

fn utc_micros() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn utf8_list() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

/// Columns of a findings Parquet file (the `Finding` JSON shape, flattened).
pub fn findings_file_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new("rule_id", DataType::Utf8, false),
            Field::new("severity", DataType::Utf8, false),
            Field::new("title", DataType::Utf8, false),
            Field::new("outcome", DataType::Utf8, false),
            Field::new("time", utc_micros(), false),
            Field::new("last_time", utc_micros(), false),
            Field::new("principal", DataType::Utf8, true),
            Field::new("impersonated", DataType::Utf8, true),
            Field::new("source_ip", DataType::Utf8, true),
            Field::new("verb", DataType::Utf8, true),
            Field::new("api_group", DataType::Utf8, true),
            Field::new("resource", DataType::Utf8, true),
            Field::new("subresource", DataType::Utf8, true),
            Field::new("namespace", DataType::Utf8, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("details", DataType::Utf8, true),
            Field::new("response_code", DataType::Int32, true),
            Field::new("evidence", utf8_list(), false),
            Field::new("count", DataType::UInt64, false),
            Field::new("mitre", utf8_list(), false),
            Field::new("remediation", DataType::Utf8, false),
            // Added after the first archives were written: nullable, so their files (which
            // lack it) read as NULL.
            Field::new("objects", utf8_list(), true),
        ]))
    });
    SCHEMA.clone()
}

/// Columns of an rbac_history Parquet file: one row per version of a Role, ClusterRole,
/// RoleBinding or ClusterRoleBinding, as the audit events showed it.
pub fn rbac_history_file_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            // When the change happened (stage time of its ResponseComplete event).
            Field::new("changed_at", utc_micros(), false),
            // Role, ClusterRole, RoleBinding, ClusterRoleBinding.
            Field::new("kind", DataType::Utf8, false),
            // Empty for cluster-scoped kinds.
            Field::new("namespace", DataType::Utf8, false),
            Field::new("name", DataType::Utf8, false),
            // created, changed, removed.
            Field::new("change", DataType::Utf8, false),
            // False when the event carried no body (Metadata level): the content is unknown.
            Field::new("content_known", DataType::Boolean, false),
            // Bindings: `ClusterRole/name` or `Role/name`.
            Field::new("role_ref", DataType::Utf8, true),
            // Bindings: `User:alice`, `Group:devs`, `ServiceAccount:ns/name`.
            Field::new("subjects", utf8_list(), true),
            // Roles: the rules (and aggregation rule), normalised JSON.
            Field::new("rules", DataType::Utf8, true),
            // Null without a baseline; else whether this version matches it.
            Field::new("matches_baseline", DataType::Boolean, true),
            Field::new("principal", DataType::Utf8, true),
            Field::new("verb", DataType::Utf8, false),
            Field::new("audit_id", DataType::Utf8, false),
        ]))
    });
    SCHEMA.clone()
}
