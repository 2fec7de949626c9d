//! Typed access to the columns of an events batch that findings are built from.

use arrow::array::{
    Array, AsArray, Int32Array, ListArray, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::TimestampMicrosecondType;
use auditlake_schema::col;

use crate::finding::ObjectRef;

/// The columns of one batch, downcast once.
pub struct EventColumns<'a> {
    cluster: &'a StringArray,
    audit_id: &'a StringArray,
    stage: &'a StringArray,
    verb: &'a StringArray,
    user: &'a StringArray,
    impersonated: &'a StringArray,
    source_ips: &'a ListArray,
    api_group: &'a StringArray,
    resource: &'a StringArray,
    subresource: &'a StringArray,
    namespace: &'a StringArray,
    name: &'a StringArray,
    code: &'a Int32Array,
    stage_at: &'a TimestampMicrosecondArray,
    request_object: &'a StringArray,
    response_object: &'a StringArray,
}

/// The value of `row`, borrowed; `None` when null.
fn get(a: &StringArray, row: usize) -> Option<&str> {
    a.is_valid(row).then(|| a.value(row))
}

/// The value of `row`, owned; `None` when null.
fn text(a: &StringArray, row: usize) -> Option<String> {
    get(a, row).map(str::to_string)
}

impl<'a> EventColumns<'a> {
    /// The columns of `batch`, or the name of one that is missing or mistyped.
    pub fn new(batch: &'a RecordBatch) -> Result<Self, String> {
        let s = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_string_opt::<i32>())
                .ok_or_else(|| format!("column {name} is missing or not Utf8"))
        };
        Ok(Self {
            cluster: s(col::CLUSTER)?,
            audit_id: s(col::AUDIT_ID)?,
            stage: s(col::STAGE)?,
            verb: s(col::VERB)?,
            user: s(col::USER_USERNAME)?,
            impersonated: s(col::IMPERSONATED_USERNAME)?,
            source_ips: batch
                .column_by_name(col::SOURCE_IPS)
                .and_then(|c| c.as_list_opt::<i32>())
                .ok_or("column source_ips is missing or not a list")?,
            api_group: s(col::API_GROUP)?,
            resource: s(col::RESOURCE)?,
            subresource: s(col::SUBRESOURCE)?,
            namespace: s(col::NAMESPACE)?,
            name: s(col::NAME)?,
            code: batch
                .column_by_name(col::RESPONSE_CODE)
                .and_then(|c| c.as_primitive_opt())
                .ok_or("column response_code is missing or not Int32")?,
            stage_at: batch
                .column_by_name(col::STAGE_AT)
                .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
                .ok_or("column stage_at is missing or not a timestamp")?,
            request_object: s(col::REQUEST_OBJECT)?,
            response_object: s(col::RESPONSE_OBJECT)?,
        })
    }

    /// `requestObject` of `row` (raw JSON), when logged.
    pub fn request_object(&self, row: usize) -> Option<&str> {
        get(self.request_object, row)
    }

    /// `responseObject` of `row` (raw JSON), when logged.
    pub fn response_object(&self, row: usize) -> Option<&str> {
        get(self.response_object, row)
    }

    /// `objectRef.resource` of `row`.
    pub fn resource_str(&self, row: usize) -> Option<&str> {
        get(self.resource, row)
    }

    /// `objectRef.apiGroup` of `row`.
    pub fn api_group_str(&self, row: usize) -> Option<&str> {
        get(self.api_group, row)
    }

    /// `verb` of `row`.
    pub fn verb_str(&self, row: usize) -> Option<&str> {
        get(self.verb, row)
    }

    /// `objectRef.namespace` and `objectRef.name` of `row`.
    pub fn namespace_and_name(&self, row: usize) -> (Option<&str>, Option<&str>) {
        (get(self.namespace, row), get(self.name, row))
    }

    /// Cluster of `row`.
    pub fn cluster(&self, row: usize) -> String {
        text(self.cluster, row).unwrap_or_default()
    }
    /// `auditID` of `row`.
    pub fn audit_id(&self, row: usize) -> String {
        text(self.audit_id, row).unwrap_or_default()
    }
    /// Stage of `row`.
    pub fn stage(&self, row: usize) -> Option<&str> {
        get(self.stage, row)
    }
    /// Verb of `row`.
    pub fn verb(&self, row: usize) -> Option<String> {
        text(self.verb, row)
    }
    /// `user.username` of `row`.
    pub fn principal(&self, row: usize) -> Option<String> {
        text(self.user, row)
    }
    /// `impersonatedUser.username` of `row`.
    pub fn impersonated(&self, row: usize) -> Option<String> {
        text(self.impersonated, row)
    }
    /// The last `sourceIPs` entry: the address the apiserver itself saw.
    pub fn source_ip(&self, row: usize) -> Option<String> {
        if self.source_ips.is_null(row) {
            return None;
        }
        let ips = self.source_ips.value(row);
        let ips = ips.as_string_opt::<i32>()?;
        (!ips.is_empty() && ips.is_valid(ips.len() - 1)).then(|| ips.value(ips.len() - 1).into())
    }
    /// Response code of `row`.
    pub fn code(&self, row: usize) -> Option<i32> {
        self.code.is_valid(row).then(|| self.code.value(row))
    }
    /// Stage time of `row` in microseconds.
    pub fn stage_at(&self, row: usize) -> i64 {
        if self.stage_at.is_valid(row) {
            self.stage_at.value(row)
        } else {
            0
        }
    }
    /// Appends [`ObjectRef::display`] of `row`'s object to `s`, without building the
    /// `ObjectRef`.
    pub fn push_object_key(&self, row: usize, s: &mut String) {
        s.push_str(get(self.resource, row).unwrap_or(""));
        if let Some(sub) = get(self.subresource, row) {
            s.push('/');
            s.push_str(sub);
        }
        s.push(' ');
        if let Some(ns) = get(self.namespace, row) {
            s.push_str(ns);
            s.push('/');
        }
        s.push_str(get(self.name, row).unwrap_or("*"));
    }

    /// `user.username` of `row`, borrowed.
    pub fn principal_str(&self, row: usize) -> Option<&str> {
        get(self.user, row)
    }

    /// `auditID` of `row`, borrowed.
    pub fn audit_id_str(&self, row: usize) -> &str {
        get(self.audit_id, row).unwrap_or("")
    }

    /// The object `row` acted on.
    pub fn object(&self, row: usize) -> ObjectRef {
        ObjectRef {
            api_group: text(self.api_group, row),
            resource: text(self.resource, row),
            subresource: text(self.subresource, row),
            namespace: text(self.namespace, row),
            name: text(self.name, row),
        }
    }
}
