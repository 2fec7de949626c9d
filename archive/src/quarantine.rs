//! Quarantine files: NDJSON records of inputs that could not be decoded, with the reason,
//! the position and the raw bytes, so nothing is silently dropped.

use auditlake_schema::Quarantined;

/// Appends one quarantined input as an NDJSON line to `out`. The raw bytes go in `raw` when
/// they are UTF-8 and in `raw_base64` otherwise, so invalid UTF-8 survives byte for byte.
pub fn quarantine_line(q: &Quarantined, out: &mut Vec<u8>) {
    let mut obj = serde_json::Map::new();
    obj.insert("source".into(), q.source.clone().into());
    if let Some(line) = q.line {
        obj.insert("line".into(), line.into());
    }
    if let Some(item) = q.item {
        obj.insert("item".into(), item.into());
    }
    obj.insert("byte_offset".into(), q.byte_offset.into());
    obj.insert("reason".into(), q.reason.clone().into());
    match std::str::from_utf8(&q.raw) {
        Ok(s) => obj.insert("raw".into(), s.into()),
        Err(_) => obj.insert("raw_base64".into(), base64(&q.raw).into()),
    };
    obj.insert("raw_len".into(), q.raw_len.into());
    obj.insert(
        "raw_truncated".into(),
        (q.raw_len > q.raw.len() as u64).into(),
    );
    // A map of strings and numbers always serialises.
    if serde_json::to_writer(&mut *out, &obj).is_ok() {
        out.push(b'\n');
    }
}

/// Serialises quarantined inputs as NDJSON (see [`quarantine_line`]).
pub fn quarantine_ndjson(records: &[Quarantined]) -> Vec<u8> {
    let mut out = Vec::new();
    for q in records {
        quarantine_line(q, &mut out);
    }
    out
}

/// Bytes the quarantine file of `records` takes at most, roughly (for commit cadence).
pub fn quarantine_weight(q: &Quarantined) -> usize {
    // base64 inflates by 4/3; JSON escaping of text rarely more.
    q.raw.len() * 4 / 3 + q.reason.len() + q.source.len() + 128
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn invalid_utf8_is_kept_as_base64() {
        let q = Quarantined {
            cluster: "c".into(),
            source: "a.log".into(),
            line: Some(3),
            item: None,
            byte_offset: 10,
            reason: "invalid UTF-8".into(),
            raw: vec![0xff, b'a'],
            raw_len: 2,
        };
        let v: serde_json::Value = serde_json::from_slice(&quarantine_ndjson(&[q])).unwrap();
        assert_eq!(v["raw_base64"], "/2E=");
        assert_eq!(v["line"], 3);
        assert_eq!(v["raw_truncated"], false);
    }
}
