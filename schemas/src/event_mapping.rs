//! The audit.k8s.io event mapping: one event's fields, checked and collected from the
//! simd-json tape first (a bad event leaves the builders untouched), then appended to the
//! columns of the events schema; free-form parts re-encoded as JSON text, fields the schema
//! does not name kept in `unmapped`.

use std::borrow::Cow;

use arrow::array::{ListBuilder, StringBuilder};
use simd_json::prelude::*;
use simd_json::tape::{Array, Object, Value};

use crate::decoder::{Scratch, SourcePos};
use crate::event_builder::EventBatchBuilder;
use crate::tape_span::{Doc, Located};
use crate::timestamp::parse_timestamp;

/// What the events of one input (or of one envelope's part of it) share: where they are
/// from (`pos`, whose cluster is theirs), the parsed input, and their digests' seed.
pub(crate) struct Ctx<'a> {
    pub(crate) ingested_at: i64,
    pub(crate) pos: SourcePos<'a>,
    pub(crate) max_quarantined: usize,
    pub(crate) doc: Doc<'a>,
    /// The digests' key and `pos.cluster` hashed, so equal events of two clusters differ
    /// (0 when the decoder takes no digests).
    pub(crate) digest_seed: u64,
    /// The envelope the input is decoded as, when the source names it (`--envelope`);
    /// `None` recognises it by shape.
    pub(crate) envelope: Option<crate::envelope::Envelope>,
}

impl<'a> Ctx<'a> {
    /// The context of events of `cluster` found in `doc`, from the same input as `self`
    /// (an envelope naming its cluster).
    pub(crate) fn for_cluster<'b>(
        &self,
        cluster: &'b str,
        doc: Doc<'b>,
        scratch: &Scratch,
    ) -> Ctx<'b>
    where
        'a: 'b,
    {
        Ctx {
            ingested_at: self.ingested_at,
            pos: SourcePos {
                cluster,
                ..self.pos
            },
            max_quarantined: self.max_quarantined,
            doc,
            digest_seed: scratch.digest_seed(cluster),
            envelope: self.envelope,
        }
    }
}

/// Handles on the parts of one event, collected before anything is appended so that a
/// bad event leaves the builders untouched.
#[derive(Default)]
pub(crate) struct Fields<'t, 'i> {
    api_version: Option<&'i str>,
    audit_id: Option<&'i str>,
    stage: Option<&'i str>,
    level: Option<&'i str>,
    /// OpenShift's forwarder moves the audit level here and writes its own in `level`.
    audit_level: Option<&'i str>,
    level_at: Option<Located<'t, 'i>>,
    verb: Option<&'i str>,
    request_uri: Option<&'i str>,
    user: UserFields<'t, 'i>,
    impersonated: UserFields<'t, 'i>,
    source_ips: Option<Array<'t, 'i>>,
    user_agent: Option<&'i str>,
    object_ref: [Option<&'i str>; 8],
    response_code: Option<i32>,
    response_status: Option<&'i str>,
    response_reason: Option<&'i str>,
    response_message: Option<&'i str>,
    response_details: Option<Located<'t, 'i>>,
    annotations: Option<Located<'t, 'i>>,
    request_object: Option<Located<'t, 'i>>,
    response_object: Option<Located<'t, 'i>>,
    request_received: Option<&'i str>,
    stage_timestamp: Option<&'i str>,
    /// Where the two timestamps are (their text goes to `unmapped` when not RFC 3339).
    request_received_at: Option<Located<'t, 'i>>,
    stage_timestamp_at: Option<Located<'t, 'i>>,
    legacy_timestamp: Option<&'i str>,
    unmapped: Vec<(Cow<'static, str>, Located<'t, 'i>)>,
}

#[derive(Default)]
pub(crate) struct UserFields<'t, 'i> {
    username: Option<&'i str>,
    uid: Option<&'i str>,
    groups: Option<Array<'t, 'i>>,
    extra: Option<Located<'t, 'i>>,
}

/// Error paths of the `objectRef` keys, same order.
pub(crate) const OBJECT_REF_PATHS: [&str; 8] = [
    "objectRef.resource",
    "objectRef.subresource",
    "objectRef.namespace",
    "objectRef.name",
    "objectRef.uid",
    "objectRef.apiGroup",
    "objectRef.apiVersion",
    "objectRef.resourceVersion",
];

/// `objectRef` keys in the order of `Fields::object_ref`.
pub(crate) const OBJECT_REF_KEYS: [&str; 8] = [
    "resource",
    "subresource",
    "namespace",
    "name",
    "uid",
    "apiGroup",
    "apiVersion",
    "resourceVersion",
];

pub(crate) fn expect_str<'i>(v: Value<'_, 'i>, path: &str) -> Result<Option<&'i str>, String> {
    if v.is_null() {
        return Ok(None);
    }
    v.into_string()
        .map(Some)
        .ok_or_else(|| format!("field `{path}`: expected string, found {}", type_name(v)))
}

pub(crate) fn expect_object<'t, 'i>(
    v: Value<'t, 'i>,
    path: &str,
) -> Result<Option<Object<'t, 'i>>, String> {
    if v.is_null() {
        return Ok(None);
    }
    v.as_object()
        .map(Some)
        .ok_or_else(|| format!("field `{path}`: expected object, found {}", type_name(v)))
}

pub(crate) fn expect_str_array<'t, 'i>(
    v: Value<'t, 'i>,
    path: &str,
) -> Result<Option<Array<'t, 'i>>, String> {
    if v.is_null() {
        return Ok(None);
    }
    let arr = v.as_array().ok_or_else(|| {
        format!(
            "field `{path}`: expected array of strings, found {}",
            type_name(v)
        )
    })?;
    for (i, item) in arr.iter().enumerate() {
        if item.as_str().is_none() {
            return Err(format!(
                "field `{path}[{i}]`: expected string, found {}",
                type_name(item)
            ));
        }
    }
    Ok(Some(arr))
}

pub(crate) fn nested_path(parent: &str, key: &str) -> Cow<'static, str> {
    Cow::Owned(format!("{parent}.{key}"))
}

/// Error paths of the `user` and `impersonatedUser` fields, so the hot path never formats.
pub(crate) struct UserPaths {
    parent: &'static str,
    username: &'static str,
    uid: &'static str,
    groups: &'static str,
    extra: &'static str,
}

pub(crate) const USER_PATHS: UserPaths = UserPaths {
    parent: "user",
    username: "user.username",
    uid: "user.uid",
    groups: "user.groups",
    extra: "user.extra",
};

pub(crate) const IMPERSONATED_PATHS: UserPaths = UserPaths {
    parent: "impersonatedUser",
    username: "impersonatedUser.username",
    uid: "impersonatedUser.uid",
    groups: "impersonatedUser.groups",
    extra: "impersonatedUser.extra",
};

pub(crate) fn collect_user<'t, 'i>(
    user: Located<'t, 'i>,
    paths: &UserPaths,
    out: &mut UserFields<'t, 'i>,
    unmapped: &mut Vec<(Cow<'static, str>, Located<'t, 'i>)>,
) -> Result<(), String> {
    if expect_object(user.value, paths.parent)?.is_none() {
        return Ok(());
    }
    for (k, located) in user.entries() {
        let v = located.value;
        match k {
            "username" => out.username = expect_str(v, paths.username)?,
            "uid" => out.uid = expect_str(v, paths.uid)?,
            "groups" => out.groups = expect_str_array(v, paths.groups)?,
            "extra" => {
                if !v.is_null() {
                    expect_object(v, paths.extra)?;
                    out.extra = Some(located);
                }
            }
            _ => unmapped.push((nested_path(paths.parent, k), located)),
        }
    }
    Ok(())
}

pub(crate) fn collect<'t, 'i>(root: Located<'t, 'i>) -> Result<Fields<'t, 'i>, String> {
    if !root.value.is_object() {
        return Err(format!(
            "expected an audit Event object, found {}",
            type_name(root.value)
        ));
    }
    let mut f = Fields::default();
    for (k, located) in root.entries() {
        let v = located.value;
        match k {
            "kind" => match v.as_str() {
                Some("Event") => {}
                Some(other) => {
                    return Err(format!(
                        "field `kind`: expected \"Event\", found \"{other}\""
                    ));
                }
                None => {
                    return Err(format!(
                        "field `kind`: expected string, found {}",
                        type_name(v)
                    ));
                }
            },
            "apiVersion" => f.api_version = expect_str(v, "apiVersion")?,
            "auditID" => f.audit_id = expect_str(v, "auditID")?,
            "stage" => f.stage = expect_str(v, "stage")?,
            "level" => {
                f.level = expect_str(v, "level")?;
                f.level_at = Some(located);
            }
            "k8s_audit_level" | "openshift_audit_level" => {
                f.audit_level = expect_str(v, k)?;
            }
            "verb" => f.verb = expect_str(v, "verb")?,
            "requestURI" => f.request_uri = expect_str(v, "requestURI")?,
            "user" => collect_user(located, &USER_PATHS, &mut f.user, &mut f.unmapped)?,
            "impersonatedUser" => collect_user(
                located,
                &IMPERSONATED_PATHS,
                &mut f.impersonated,
                &mut f.unmapped,
            )?,
            "sourceIPs" => f.source_ips = expect_str_array(v, "sourceIPs")?,
            "userAgent" => f.user_agent = expect_str(v, "userAgent")?,
            "objectRef" => {
                if expect_object(v, "objectRef")?.is_none() {
                    continue;
                }
                for (k, located) in located.entries() {
                    match OBJECT_REF_KEYS.iter().position(|&name| name == k) {
                        Some(i) => {
                            f.object_ref[i] = expect_str(located.value, OBJECT_REF_PATHS[i])?
                        }
                        None => f.unmapped.push((nested_path("objectRef", k), located)),
                    }
                }
            }
            "responseStatus" => {
                if expect_object(v, "responseStatus")?.is_none() {
                    continue;
                }
                for (k, located) in located.entries() {
                    let v = located.value;
                    match k {
                        "code" => {
                            if v.is_null() {
                                continue;
                            }
                            let code = v.as_i64().and_then(|c| i32::try_from(c).ok()).ok_or_else(|| {
                                format!("field `responseStatus.code`: expected 32-bit integer, found {}", type_name(v))
                            })?;
                            f.response_code = Some(code);
                        }
                        "status" => f.response_status = expect_str(v, "responseStatus.status")?,
                        "reason" => f.response_reason = expect_str(v, "responseStatus.reason")?,
                        "message" => f.response_message = expect_str(v, "responseStatus.message")?,
                        "details" => f.response_details = (!v.is_null()).then_some(located),
                        // Status objects always carry an empty ListMeta: nothing to keep.
                        "metadata" if v.as_object().is_some_and(|m| m.is_empty()) => {}
                        _ => f.unmapped.push((nested_path("responseStatus", k), located)),
                    }
                }
            }
            "annotations" => {
                if let Some(a) = expect_object(v, "annotations")? {
                    for (k, v) in a.iter() {
                        if v.as_str().is_none() {
                            return Err(format!(
                                "field `annotations.{k}`: expected string, found {}",
                                type_name(v)
                            ));
                        }
                    }
                    f.annotations = Some(located);
                }
            }
            "requestObject" => f.request_object = (!v.is_null()).then_some(located),
            "responseObject" => f.response_object = (!v.is_null()).then_some(located),
            "requestReceivedTimestamp" => {
                f.request_received = expect_str(v, "requestReceivedTimestamp")?;
                f.request_received_at = Some(located);
            }
            "stageTimestamp" => {
                f.stage_timestamp = expect_str(v, "stageTimestamp")?;
                f.stage_timestamp_at = Some(located);
            }
            "timestamp" => {
                // audit.k8s.io/v1beta1: the time of the event; kept in `unmapped` too.
                f.legacy_timestamp = expect_str(v, "timestamp")?;
                f.unmapped.push((Cow::Borrowed("timestamp"), located));
            }
            _ => f.unmapped.push((Cow::Owned(k.to_string()), located)),
        }
    }
    if let Some(level) = f.audit_level {
        // The forwarder's own `level` ("default", "info") is kept, under its name.
        if let Some(at) = f.level_at {
            f.unmapped.push((Cow::Borrowed("level"), at));
        }
        f.level = Some(level);
    }
    Ok(f)
}

/// Reads a timestamp field; `Ok(Some((micros, rfc3339)))` when present and readable (see
/// [`parse_timestamp`]: a form that is not RFC 3339 is read, its original text kept).
pub(crate) fn parse_time(text: Option<&str>, field: &str) -> Result<Option<(i64, bool)>, String> {
    match text {
        None => Ok(None),
        Some(t) => parse_timestamp(t)
            .map(|t| Some((t.micros, t.rfc3339)))
            .ok_or_else(|| format!("field `{field}`: not a timestamp (RFC 3339, or the same with a space for T or no zone): {t:?}")),
    }
}

pub(crate) fn append_event(
    root: Located<'_, '_>,
    list_api_version: Option<&str>,
    ctx: &Ctx<'_>,
    item: Option<u64>,
    b: &mut EventBatchBuilder,
    scratch: &mut Scratch,
) -> Result<(), String> {
    let f = collect(root)?;
    let audit_id = match f.audit_id {
        Some(id) if !id.is_empty() => id,
        Some(_) => return Err("field `auditID` is empty".into()),
        None => return Err("missing field `auditID`".into()),
    };
    let mut f = f;
    let legacy = parse_time(f.legacy_timestamp, "timestamp")?;
    let received = parse_time(f.request_received, "requestReceivedTimestamp")?;
    let stage = parse_time(f.stage_timestamp, "stageTimestamp")?;
    // A timestamp that was not RFC 3339 is normalised in its column; its original text is
    // kept in `unmapped` under its field name, so nothing the source said is lost.
    for (field, parsed, located) in [
        ("requestReceivedTimestamp", received, f.request_received_at),
        ("stageTimestamp", stage, f.stage_timestamp_at),
    ] {
        if let (Some((_, false)), Some(located)) = (parsed, located) {
            f.unmapped.push((Cow::Borrowed(field), located));
        }
    }
    let received = received
        .or(legacy)
        .map(|t| t.0)
        .ok_or("missing field `requestReceivedTimestamp`")?;
    let stage_at = stage
        .or(legacy)
        .map(|t| t.0)
        .ok_or("missing field `stageTimestamp`")?;

    // Validated: from here on every column gets exactly one value.
    b.cluster.append_value(ctx.pos.cluster);
    b.event_api_version
        .append_option(f.api_version.or(list_api_version));
    b.audit_id.append_value(audit_id);
    b.stage.append_option(f.stage);
    b.level.append_option(f.level);
    b.verb.append_option(f.verb);
    b.request_uri.append_option(f.request_uri);
    append_user(
        &f.user,
        &mut b.user_username,
        &mut b.user_uid,
        &mut b.user_groups,
        &mut b.user_extra,
        ctx.doc,
        scratch,
    );
    append_user(
        &f.impersonated,
        &mut b.impersonated_username,
        &mut b.impersonated_uid,
        &mut b.impersonated_groups,
        &mut b.impersonated_extra,
        ctx.doc,
        scratch,
    );
    append_list(&mut b.source_ips, f.source_ips);
    b.user_agent.append_option(f.user_agent);
    let [
        resource,
        subresource,
        namespace,
        name,
        uid,
        api_group,
        api_version,
        resource_version,
    ] = f.object_ref;
    b.resource.append_option(resource);
    b.subresource.append_option(subresource);
    b.namespace.append_option(namespace);
    b.name.append_option(name);
    b.object_uid.append_option(uid);
    b.api_group.append_option(api_group);
    b.api_version.append_option(api_version);
    b.resource_version.append_option(resource_version);
    b.response_code.append_option(f.response_code);
    b.response_status.append_option(f.response_status);
    b.response_reason.append_option(f.response_reason);
    b.response_message.append_option(f.response_message);
    append_json(
        &mut b.response_details,
        f.response_details,
        ctx.doc,
        scratch,
    );
    let annotation = |key: &str| {
        f.annotations
            .and_then(|a| a.value.get(key))
            .and_then(|v| v.into_string())
    };
    b.authz_decision
        .append_option(annotation("authorization.k8s.io/decision"));
    b.authz_reason
        .append_option(annotation("authorization.k8s.io/reason"));
    append_json(&mut b.annotations, f.annotations, ctx.doc, scratch);
    for body in [f.request_object, f.response_object].into_iter().flatten() {
        if body.value.as_str() == Some("skipped-too-big-size-object") {
            scratch.skip(crate::envelope::Skipped::AzureObjectTooBig, 1);
        }
    }
    append_json(&mut b.request_object, f.request_object, ctx.doc, scratch);
    append_json(&mut b.response_object, f.response_object, ctx.doc, scratch);
    b.request_received_at.append_value(received);
    b.stage_at.append_value(stage_at);
    if f.unmapped.is_empty() {
        b.unmapped.append_null();
    } else {
        let mut out = std::mem::take(&mut scratch.json);
        out.clear();
        out.push(b'{');
        for (i, (k, v)) in f.unmapped.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json_string(&mut out, k);
            out.push(b':');
            match v.raw(ctx.doc) {
                Some(raw) => out.extend_from_slice(raw),
                // Writing into a Vec cannot fail.
                None => _ = v.value.write(&mut out),
            }
        }
        out.push(b'}');
        b.unmapped.append_value(String::from_utf8_lossy(&out));
        scratch.json = out;
    }
    finish_row(root, ctx, item, b, scratch);
    Ok(())
}

/// Appends the columns every mapping fills alike (`ingested_at`, `source_ref`,
/// `envelope`) and the row's digest, and ends the row.
pub(crate) fn finish_row(
    root: Located<'_, '_>,
    ctx: &Ctx<'_>,
    item: Option<u64>,
    b: &mut EventBatchBuilder,
    scratch: &mut Scratch,
) {
    b.ingested_at.append_value(ctx.ingested_at);
    // Formatted by hand: `write!` costs more than the rest of this row's scalars.
    let mut digits = itoa::Buffer::new();
    scratch.source_ref.clear();
    scratch.source_ref.push_str(ctx.pos.source);
    if let Some(line) = ctx.pos.line {
        scratch.source_ref.push(':');
        scratch.source_ref.push_str(digits.format(line));
    }
    if let Some(i) = item {
        scratch.source_ref.push('#');
        scratch.source_ref.push_str(digits.format(i));
    }
    b.source_ref.append_value(&scratch.source_ref);
    b.envelope.append_option(scratch.meta.current());
    if let Some(digests) = &mut scratch.digests {
        let text = json_text(root, ctx.doc, &mut scratch.json);
        digests.push(twox_hash::XxHash3_128::oneshot_with_seed(
            ctx.digest_seed,
            text.as_bytes(),
        ));
    }
    b.row_done();
}

pub(crate) fn append_user(
    u: &UserFields<'_, '_>,
    username: &mut StringBuilder,
    uid: &mut StringBuilder,
    groups: &mut ListBuilder<StringBuilder>,
    extra: &mut StringBuilder,
    doc: Doc<'_>,
    scratch: &mut Scratch,
) {
    username.append_option(u.username);
    uid.append_option(u.uid);
    append_list(groups, u.groups);
    append_json(extra, u.extra, doc, scratch);
}

pub(crate) fn append_list(b: &mut ListBuilder<StringBuilder>, arr: Option<Array<'_, '_>>) {
    match arr {
        None => b.append_null(),
        Some(arr) => {
            for v in arr.iter() {
                b.values().append_option(v.into_string());
            }
            b.append(true);
        }
    }
}

pub(crate) fn append_json(
    b: &mut StringBuilder,
    v: Option<Located<'_, '_>>,
    doc: Doc<'_>,
    scratch: &mut Scratch,
) {
    match v {
        None => b.append_null(),
        Some(v) => b.append_value(json_text(v, doc, &mut scratch.json)),
    }
}

/// The JSON text of a value: the bytes an object or array arrived as, or a scalar
/// re-encoded into `buf`.
pub(crate) fn json_text<'a>(
    v: Located<'_, '_>,
    doc: Doc<'a>,
    buf: &'a mut Vec<u8>,
) -> Cow<'a, str> {
    let bytes = match v.raw(doc) {
        Some(raw) => raw,
        None => {
            buf.clear();
            // Writing into a Vec cannot fail.
            let _ = v.value.write(&mut *buf);
            buf
        }
    };
    // simd-json validated the input as UTF-8 and its writer escapes strings, so this is
    // always the borrowed (valid) case; the check is SIMD (std's went a word at a time and
    // was ~1% of an ingest's decoding thread over the bodies).
    match simdutf8::basic::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// Hands `s` to `out` as the contents of a JSON string literal (without the quotes), in
/// runs: the characters that need no escape are passed through as they are, in one piece.
pub(crate) fn escape_json(s: &str, mut out: impl FnMut(&str)) {
    let bytes = s.as_bytes();
    // Most strings need no escape: one check (no early exit, so it compiles to vector
    // compares) rather than a branch per byte.
    let plain = !bytes.iter().fold(false, |esc, &c| {
        esc | (c < 0x20) | (c == b'"') | (c == b'\\')
    });
    if plain {
        out(s);
        return;
    }
    let mut start = 0;
    for (i, &c) in bytes.iter().enumerate() {
        let escaped = match c {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..0x20 => "",
            _ => continue,
        };
        // Every byte matched above is ASCII, so `i` is a character boundary.
        out(&s[start..i]);
        if escaped.is_empty() {
            out(&format!("\\u{c:04x}"));
        } else {
            out(escaped);
        }
        start = i + 1;
    }
    out(&s[start..]);
}

/// Appends `s` as a JSON string literal.
pub(crate) fn write_json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    escape_json(s, |run| out.extend_from_slice(run.as_bytes()));
    out.push(b'"');
}

/// The JSON type of `v`, for error messages.
pub(crate) fn type_name(v: Value<'_, '_>) -> &'static str {
    match v.value_type() {
        ValueType::Null => "null",
        ValueType::Bool => "boolean",
        ValueType::String => "string",
        ValueType::Array => "array",
        ValueType::Object => "object",
        _ => "number",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_escape_quotes_backslashes_and_controls_and_keep_the_rest() {
        let mut out = Vec::new();
        write_json_string(&mut out, "a\"b\\c\nd\u{1}é☃");
        assert_eq!(out, "\"a\\\"b\\\\c\\nd\\u0001é☃\"".as_bytes());
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}é☃");
    }
}
