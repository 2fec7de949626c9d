//! The byte layers around JSON that managed clusters' transports add: gzip (CloudWatch
//! Logs subscriptions compress every payload, Firehose writes one gzip member per record
//! back to back) and base64 (wherever a JSON transport carries bytes: Lambda's
//! `awslogs.data`, Firehose HTTP `records[].data`, Kinesis `Data`, Pub/Sub `message.data`).
//! Inflating is bounded, so a small compressed input cannot grow memory without bound.

use std::io::Read;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// The first two bytes of every gzip member.
pub(crate) const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Whether `bytes` starts a gzip stream.
pub(crate) fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&GZIP_MAGIC)
}

/// Inflates every member of a gzip stream (a multi-member stream is its members' outputs
/// one after another), refusing to produce more than `limit` bytes.
pub(crate) fn inflate_gzip(bytes: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity((bytes.len() * 4).min(limit));
    let mut reader = flate2::read::MultiGzDecoder::new(bytes).take(limit as u64 + 1);
    reader
        .read_to_end(&mut out)
        .map_err(|e| format!("gzip: {e}"))?;
    if out.len() > limit {
        return Err(format!(
            "gzip: inflates to more than max_inflated_bytes ({limit})"
        ));
    }
    Ok(out)
}

/// Base64 as the clouds write it: the standard alphabet, padded or not (Pub/Sub and
/// Firehose pad; some Kinesis clients do not).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes base64 text (whitespace around it ignored).
pub(crate) fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    BASE64
        .decode(text.trim())
        .map_err(|e| format!("base64: {e}"))
}

/// Whether `bytes` is base64 text of a payload worth decoding (gzip or JSON): checked on
/// the first 8 characters only, so a line of some other text is given up on cheaply.
pub(crate) fn looks_like_base64_payload(bytes: &[u8]) -> bool {
    let bytes = bytes.trim_ascii();
    if bytes.len() < 8 || bytes.len() % 4 == 1 {
        return false;
    }
    let Ok(head) = BASE64.decode(&bytes[..8]) else {
        return false;
    };
    is_gzip(&head) || matches!(head.trim_ascii_start().first(), Some(b'{' | b'['))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn inflates_every_member_of_a_multi_member_stream() {
        let mut both = gzip(b"{\"a\":1}");
        both.extend(gzip(b"{\"b\":2}"));
        assert!(is_gzip(&both));
        assert_eq!(inflate_gzip(&both, 1 << 20).unwrap(), b"{\"a\":1}{\"b\":2}");
    }

    #[test]
    fn refuses_to_inflate_past_the_limit_and_names_a_corrupt_stream() {
        let bomb = gzip(&vec![b' '; 1 << 20]);
        let err = inflate_gzip(&bomb, 1000).unwrap_err();
        assert!(err.contains("max_inflated_bytes (1000)"), "{err}");
        let mut cut = gzip(b"{\"a\":1}");
        cut.truncate(cut.len() - 4);
        assert!(inflate_gzip(&cut, 1000).unwrap_err().starts_with("gzip:"));
    }

    #[test]
    fn base64_with_or_without_padding_and_payload_sniffing() {
        assert_eq!(decode_base64("eyJhIjoxfQ==\n").unwrap(), b"{\"a\":1}");
        assert_eq!(decode_base64("eyJhIjoxfQ").unwrap(), b"{\"a\":1}");
        assert!(
            decode_base64("not base64!")
                .unwrap_err()
                .starts_with("base64:")
        );
        assert!(looks_like_base64_payload(b"eyJhIjoxfQ=="));
        let gz = BASE64.encode(gzip(b"{}"));
        assert!(looks_like_base64_payload(gz.as_bytes()));
        assert!(!looks_like_base64_payload(b"2026-01-01T00:00:00Z {}"));
        assert!(!looks_like_base64_payload(b"aGVsbG8gd29ybGQ="));
    }
}
