//! The little of DER (X.509 certificates, PKCS#10 requests) auditlake reads: elements and the
//! attributes of a distinguished name. Anything malformed reads as nothing.

/// A DER element: its tag, its contents, and the input after it.
pub fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// Object identifier of the common name (2.5.4.3).
pub const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
/// Object identifier of the organisation (2.5.4.10).
pub const ORGANIZATION: &[u8] = &[0x55, 0x04, 0x0a];

/// The (attribute OID, value text) pairs of a distinguished name's contents, in order.
pub fn name_attributes(mut name: &[u8]) -> Vec<(&[u8], String)> {
    let mut out = Vec::new();
    while !name.is_empty() {
        let Some((_, set, next)) = element(name) else {
            break;
        };
        name = next;
        let attribute = element(set)
            .and_then(|(_, attribute, _)| element(attribute))
            .and_then(|(_, oid, value)| Some((oid, element(value)?.1)));
        if let Some((oid, text)) = attribute {
            out.push((oid, String::from_utf8_lossy(text).into_owned()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_and_names_read_and_malformed_ones_give_nothing() {
        // SET { SEQUENCE { OID 2.5.4.3, UTF8String "ab" } }
        let name = [
            0x31, 0x0b, 0x30, 0x09, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x02, b'a', b'b',
        ];
        assert_eq!(name_attributes(&name), [(COMMON_NAME, "ab".to_string())]);
        assert!(
            element(&[0x30, 0x05, 0x01]).is_none(),
            "length past the end"
        );
        assert!(
            element(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_none(),
            "length of 5 bytes"
        );
        assert!(name_attributes(&[0x31, 0x09, 0x30]).is_empty());
    }
}
