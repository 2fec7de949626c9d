//! Column builders for the events schema: decoders append to them row by row and
//! finish them into a `RecordBatch`.

use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, Int32Builder, ListBuilder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};

use crate::events_schema::events_schema;

/// One Arrow builder per column of the events schema, in schema order.
///
/// Every decoder fills each builder exactly once per row; [`EventBatchBuilder::finish`]
/// checks that all columns have the same length.
#[allow(missing_docs)] // each field is the builder of the column of the same name (see `col`).
pub struct EventBatchBuilder {
    pub cluster: StringBuilder,
    pub event_api_version: StringBuilder,
    pub audit_id: StringBuilder,
    pub stage: StringBuilder,
    pub level: StringBuilder,
    pub verb: StringBuilder,
    pub request_uri: StringBuilder,
    pub user_username: StringBuilder,
    pub user_uid: StringBuilder,
    pub user_groups: ListBuilder<StringBuilder>,
    pub user_extra: StringBuilder,
    pub impersonated_username: StringBuilder,
    pub impersonated_uid: StringBuilder,
    pub impersonated_groups: ListBuilder<StringBuilder>,
    pub impersonated_extra: StringBuilder,
    pub source_ips: ListBuilder<StringBuilder>,
    pub user_agent: StringBuilder,
    pub resource: StringBuilder,
    pub subresource: StringBuilder,
    pub namespace: StringBuilder,
    pub name: StringBuilder,
    pub object_uid: StringBuilder,
    pub api_group: StringBuilder,
    pub api_version: StringBuilder,
    pub resource_version: StringBuilder,
    pub response_code: Int32Builder,
    pub response_status: StringBuilder,
    pub response_reason: StringBuilder,
    pub response_message: StringBuilder,
    pub response_details: StringBuilder,
    pub authz_decision: StringBuilder,
    pub authz_reason: StringBuilder,
    pub annotations: StringBuilder,
    pub request_object: StringBuilder,
    pub response_object: StringBuilder,
    pub request_received_at: TimestampMicrosecondBuilder,
    pub stage_at: TimestampMicrosecondBuilder,
    pub ingested_at: TimestampMicrosecondBuilder,
    pub source_ref: StringBuilder,
    pub unmapped: StringBuilder,
    pub envelope: StringBuilder,
    rows: usize,
}

impl Default for EventBatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// A builder that can be finished into an array and replaced by an empty one sized like it.
trait Refill {
    fn finish_and_refill(&mut self) -> ArrayRef;
}

impl Refill for StringBuilder {
    fn finish_and_refill(&mut self) -> ArrayRef {
        let next = StringBuilder::with_capacity(self.len(), self.values_slice().len());
        Arc::new(std::mem::replace(self, next).finish())
    }
}

impl Refill for ListBuilder<StringBuilder> {
    fn finish_and_refill(&mut self) -> ArrayRef {
        let items = self.values_ref();
        let values = StringBuilder::with_capacity(items.len(), items.values_slice().len());
        let next = ListBuilder::with_capacity(values, self.len());
        Arc::new(std::mem::replace(self, next).finish())
    }
}

impl Refill for Int32Builder {
    fn finish_and_refill(&mut self) -> ArrayRef {
        let next = Int32Builder::with_capacity(self.len());
        Arc::new(std::mem::replace(self, next).finish())
    }
}

impl Refill for TimestampMicrosecondBuilder {
    fn finish_and_refill(&mut self) -> ArrayRef {
        let next = TimestampMicrosecondBuilder::with_capacity(self.len()).with_timezone("UTC");
        Arc::new(std::mem::replace(self, next).finish())
    }
}

fn ts() -> TimestampMicrosecondBuilder {
    TimestampMicrosecondBuilder::new().with_timezone("UTC")
}

impl EventBatchBuilder {
    /// Empty builders for every column.
    pub fn new() -> Self {
        Self {
            cluster: StringBuilder::new(),
            event_api_version: StringBuilder::new(),
            audit_id: StringBuilder::new(),
            stage: StringBuilder::new(),
            level: StringBuilder::new(),
            verb: StringBuilder::new(),
            request_uri: StringBuilder::new(),
            user_username: StringBuilder::new(),
            user_uid: StringBuilder::new(),
            user_groups: ListBuilder::new(StringBuilder::new()),
            user_extra: StringBuilder::new(),
            impersonated_username: StringBuilder::new(),
            impersonated_uid: StringBuilder::new(),
            impersonated_groups: ListBuilder::new(StringBuilder::new()),
            impersonated_extra: StringBuilder::new(),
            source_ips: ListBuilder::new(StringBuilder::new()),
            user_agent: StringBuilder::new(),
            resource: StringBuilder::new(),
            subresource: StringBuilder::new(),
            namespace: StringBuilder::new(),
            name: StringBuilder::new(),
            object_uid: StringBuilder::new(),
            api_group: StringBuilder::new(),
            api_version: StringBuilder::new(),
            resource_version: StringBuilder::new(),
            response_code: Int32Builder::new(),
            response_status: StringBuilder::new(),
            response_reason: StringBuilder::new(),
            response_message: StringBuilder::new(),
            response_details: StringBuilder::new(),
            authz_decision: StringBuilder::new(),
            authz_reason: StringBuilder::new(),
            annotations: StringBuilder::new(),
            request_object: StringBuilder::new(),
            response_object: StringBuilder::new(),
            request_received_at: ts(),
            stage_at: ts(),
            ingested_at: ts(),
            source_ref: StringBuilder::new(),
            unmapped: StringBuilder::new(),
            envelope: StringBuilder::new(),
            rows: 0,
        }
    }

    /// Records that one complete row was appended to every builder.
    pub fn row_done(&mut self) {
        self.rows += 1;
    }

    /// Rows appended since the last [`EventBatchBuilder::finish`].
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Finishes all builders into a batch of the events schema and resets them, keeping
    /// this batch's sizes as the next one's capacity: batches of a stream are alike, and
    /// re-growing 40 builders from empty every batch costs copies and page faults.
    ///
    /// # Panics
    /// Never for a decoder that appends to every column once per row: column lengths are
    /// then equal by construction, which `RecordBatch::try_new` re-checks.
    pub fn finish(&mut self) -> RecordBatch {
        let columns: Vec<ArrayRef> = vec![
            self.cluster.finish_and_refill(),
            self.event_api_version.finish_and_refill(),
            self.audit_id.finish_and_refill(),
            self.stage.finish_and_refill(),
            self.level.finish_and_refill(),
            self.verb.finish_and_refill(),
            self.request_uri.finish_and_refill(),
            self.user_username.finish_and_refill(),
            self.user_uid.finish_and_refill(),
            self.user_groups.finish_and_refill(),
            self.user_extra.finish_and_refill(),
            self.impersonated_username.finish_and_refill(),
            self.impersonated_uid.finish_and_refill(),
            self.impersonated_groups.finish_and_refill(),
            self.impersonated_extra.finish_and_refill(),
            self.source_ips.finish_and_refill(),
            self.user_agent.finish_and_refill(),
            self.resource.finish_and_refill(),
            self.subresource.finish_and_refill(),
            self.namespace.finish_and_refill(),
            self.name.finish_and_refill(),
            self.object_uid.finish_and_refill(),
            self.api_group.finish_and_refill(),
            self.api_version.finish_and_refill(),
            self.resource_version.finish_and_refill(),
            self.response_code.finish_and_refill(),
            self.response_status.finish_and_refill(),
            self.response_reason.finish_and_refill(),
            self.response_message.finish_and_refill(),
            self.response_details.finish_and_refill(),
            self.authz_decision.finish_and_refill(),
            self.authz_reason.finish_and_refill(),
            self.annotations.finish_and_refill(),
            self.request_object.finish_and_refill(),
            self.response_object.finish_and_refill(),
            self.request_received_at.finish_and_refill(),
            self.stage_at.finish_and_refill(),
            self.ingested_at.finish_and_refill(),
            self.source_ref.finish_and_refill(),
            self.unmapped.finish_and_refill(),
            self.envelope.finish_and_refill(),
        ];
        self.rows = 0;
        #[allow(clippy::expect_used)]
        RecordBatch::try_new(events_schema(), columns)
            .expect("every decoder appends each column once per row (see EventBatchBuilder docs)")
    }
}
