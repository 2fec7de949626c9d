//! The subject a CertificateSigningRequest asks for. The identity a client certificate
//! carries (its user in CN, its groups in O) is inside `spec.request`: base64 of a PEM
//! PKCS#10 request, so a rule can only see it once decoded. Only what the subject needs is
//! read; anything malformed gives nothing.

use serde_json::Value;

/// `CN:<name>` and `O:<group>` entries of the CSR object's requested subject, in order.
pub(crate) fn csr_subject(obj: &Value, out: &mut Vec<String>) {
    let Some(request) = obj.pointer("/spec/request").and_then(Value::as_str) else {
        return;
    };
    let Some(pem) = base64_decode(request.as_bytes()) else {
        return;
    };
    let pem = String::from_utf8_lossy(&pem);
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    let Some(der) = base64_decode(body.as_bytes()) else {
        return;
    };
    subject_of_request(&der, out);
}

/// Standard base64 (padding optional, whitespace ignored); `None` if anything else appears.
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for &c in text {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b' ' | b'\n' | b'\r' | b'\t' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// CertificationRequest -> CertificationRequestInfo -> (version, subject): the subject's
/// common names and organisations.
fn subject_of_request(der: &[u8], out: &mut Vec<String>) -> Option<()> {
    use auditlake_schema::der::{COMMON_NAME, ORGANIZATION, element, name_attributes};
    let (_, request, _) = element(der)?;
    let (_, info, _) = element(request)?;
    let (_, _version, rest) = element(info)?;
    let (_, subject, _) = element(rest)?;
    for (oid, text) in name_attributes(subject) {
        let prefix = match oid {
            COMMON_NAME => "CN:",
            ORGANIZATION => "O:",
            _ => continue,
        };
        out.push(format!("{prefix}{text}"));
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl req -new -subj "/CN=mallory/O=system:masters"`, base64 of the PEM.
    const MASTERS_CSR: &str = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURSBSRVFVRVNULS0tLS0KTUlIbk1JR05BZ0VBTUNzeEVEQU9CZ05WQkFNTUIyMWhiR3h2Y25reEZ6QVZCZ05WQkFvTURuTjVjM1JsYlRwdApZWE4wWlhKek1Ga3dFd1lIS29aSXpqMENBUVlJS29aSXpqMERBUWNEUWdBRVBjYUpuWlhBR3dITFJuSlhWcHlKCndlVG9HUWNOVFZNOThDc2JoeG44aWsyV052MnQrQU5uYUJPQ09rNnJXSG0xUGdNb05LUk8vTkpTQmZXUHVuYW4KenFBQU1Bb0dDQ3FHU000OUJBTUNBMGtBTUVZQ0lRRFdyQk05UnBDdElZWDc3OHhPRnh6KzJ3a2pJTDRPeVh1RwpSbG11eGhzL3ZnSWhBTXN2dWlHV3VpeXpGcDZGeFBYQmd1bVZHODNzbVZlcm5sRlU5aWRMWHIxaQotLS0tLUVORCBDRVJUSUZJQ0FURSBSRVFVRVNULS0tLS0K";

    #[test]
    fn the_requested_identity_is_read_from_the_pem_request() {
        let obj = serde_json::json!({"spec": {"request": MASTERS_CSR}});
        let mut out = Vec::new();
        csr_subject(&obj, &mut out);
        assert_eq!(out, ["CN:mallory", "O:system:masters"]);
        for bad in [
            serde_json::json!({"spec": {"request": "not base64!"}}),
            serde_json::json!({"spec": {"request": "aGVsbG8="}}),
            serde_json::json!({"spec": {}}),
        ] {
            let mut out = Vec::new();
            csr_subject(&bad, &mut out);
            assert!(out.is_empty(), "{bad}");
        }
    }
}
