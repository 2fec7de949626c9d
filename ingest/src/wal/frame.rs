//! The write-ahead log's frame: how one record is laid out on disk and read back.
//!
//! `b"ALW1"`, payload length (u32 LE), CRC-32 of the payload (u32 LE), then the payload:
//! seq (u64 LE), received_at µs (i64 LE), cluster length (u16 LE), identity length (u16 LE),
//! cluster, identity, body. The full specification is in `ingest/WAL.md`.

use std::io::{ErrorKind, Read};

use super::{WalError, WalRecord};

/// First bytes of every frame.
pub(super) const MAGIC: &[u8; 4] = b"ALW1";
/// Magic, payload length, CRC.
pub(super) const HEADER: usize = 12;
/// seq, received_at, cluster length, identity length.
const FIXED_PAYLOAD: usize = 8 + 8 + 2 + 2;

/// The bytes of a frame that precede its body (header, fixed fields, cluster, identity), with
/// the CRC already covering the body: the body itself is written from the request's own
/// buffer, never copied into a frame buffer.
pub(super) fn head(
    seq: u64,
    received_at_micros: i64,
    cluster: &str,
    identity: &str,
    body: &[u8],
) -> Result<Vec<u8>, WalError> {
    let too_long = |what: &str, len: usize| {
        WalError::Record(format!("{what} of {len} bytes is longer than 65535"))
    };
    let cluster_len =
        u16::try_from(cluster.len()).map_err(|_| too_long("cluster", cluster.len()))?;
    let identity_len =
        u16::try_from(identity.len()).map_err(|_| too_long("identity", identity.len()))?;
    let payload_len = FIXED_PAYLOAD + cluster.len() + identity.len() + body.len();
    let payload_len = u32::try_from(payload_len)
        .map_err(|_| WalError::Record(format!("body of {} bytes", body.len())))?;
    let mut out = Vec::with_capacity(HEADER + FIXED_PAYLOAD + cluster.len() + identity.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&received_at_micros.to_le_bytes());
    out.extend_from_slice(&cluster_len.to_le_bytes());
    out.extend_from_slice(&identity_len.to_le_bytes());
    out.extend_from_slice(cluster.as_bytes());
    out.extend_from_slice(identity.as_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[HEADER..]);
    crc.update(body);
    out[8..12].copy_from_slice(&crc.finalize().to_le_bytes());
    Ok(out)
}

/// What the bytes at one position hold.
#[derive(Debug)]
pub(super) enum Parsed {
    /// A whole, intact frame of this many bytes.
    Frame(WalRecord, usize),
    /// The input ends inside a frame (a torn append, when at the end of the log).
    Short(String),
    /// Not a frame: wrong magic, implausible length, CRC mismatch.
    Bad(String),
}

/// Checks the header of a frame: the payload length, or why it is not a frame.
fn check_header(header: &[u8; HEADER], max_payload: u64) -> Result<(usize, u32), String> {
    if &header[..4] != MAGIC {
        return Err("bad magic".into());
    }
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    let crc = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if len < FIXED_PAYLOAD || len as u64 > max_payload {
        return Err(format!("implausible payload length {len}"));
    }
    Ok((len, crc))
}

/// Builds the record from a payload whose CRC matched.
fn record_of(mut payload: Vec<u8>) -> Result<WalRecord, String> {
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&payload[i..i + 8]);
        b
    };
    let seq = u64::from_le_bytes(u64_at(0));
    let received_at_micros = i64::from_le_bytes(u64_at(8));
    let cluster_len = u16::from_le_bytes([payload[16], payload[17]]) as usize;
    let identity_len = u16::from_le_bytes([payload[18], payload[19]]) as usize;
    let fields_end = FIXED_PAYLOAD + cluster_len + identity_len;
    if fields_end > payload.len() {
        return Err("field lengths exceed the payload".into());
    }
    let text =
        |range: std::ops::Range<usize>| String::from_utf8_lossy(&payload[range]).into_owned();
    let cluster = text(FIXED_PAYLOAD..FIXED_PAYLOAD + cluster_len);
    let identity = text(FIXED_PAYLOAD + cluster_len..fields_end);
    payload.drain(..fields_end);
    Ok(WalRecord {
        seq,
        received_at_micros,
        cluster,
        identity,
        body: payload,
    })
}

/// Parses the frame at the start of `bytes` (recovery reads whole segments).
pub(super) fn parse(bytes: &[u8]) -> Parsed {
    let Some(header) = bytes.first_chunk::<HEADER>() else {
        let n = bytes.len().min(MAGIC.len());
        return if bytes[..n] == MAGIC[..n] {
            Parsed::Short(format!("header cut after {} bytes", bytes.len()))
        } else {
            Parsed::Bad("bad magic".into())
        };
    };
    let (len, crc) = match check_header(header, u64::from(u32::MAX)) {
        Ok(h) => h,
        Err(why) => return Parsed::Bad(why),
    };
    let Some(payload) = bytes.get(HEADER..HEADER + len) else {
        return Parsed::Short(format!(
            "payload of {len} bytes cut after {}",
            bytes.len() - HEADER
        ));
    };
    if crc32fast::hash(payload) != crc {
        return Parsed::Bad("CRC mismatch".into());
    }
    match record_of(payload.to_vec()) {
        Ok(r) => Parsed::Frame(r, HEADER + len),
        Err(why) => Parsed::Bad(why),
    }
}

/// What [`read`] found at the reader's position.
pub(super) enum Read1 {
    /// A record and the bytes its frame took.
    Record(WalRecord, u64),
    /// Clean end of the data written so far.
    End,
    /// A frame that is not (yet) whole or not intact: the reader stops here.
    Incomplete,
}

/// Reads the next frame from `reader` (the archiver follows a segment as it grows).
pub(super) fn read(reader: &mut impl Read) -> std::io::Result<Read1> {
    let mut header = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match reader.read(&mut header[got..])? {
            0 if got == 0 => return Ok(Read1::End),
            0 => return Ok(Read1::Incomplete),
            n => got += n,
        }
    }
    let Ok((len, crc)) = check_header(&header, u64::from(u32::MAX)) else {
        return Ok(Read1::Incomplete);
    };
    let mut payload = vec![0u8; len];
    if let Err(e) = reader.read_exact(&mut payload) {
        return if e.kind() == ErrorKind::UnexpectedEof {
            Ok(Read1::Incomplete)
        } else {
            Err(e)
        };
    }
    if crc32fast::hash(&payload) != crc {
        return Ok(Read1::Incomplete);
    }
    Ok(match record_of(payload) {
        Ok(r) => Read1::Record(r, (HEADER + len) as u64),
        Err(_) => Read1::Incomplete,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64, body: &[u8]) -> Vec<u8> {
        let mut f = head(seq, 7, "prod", "apiserver", body).unwrap();
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn a_frame_round_trips_and_any_flipped_bit_is_caught() {
        let f = frame(42, b"{\"kind\":\"Event\"}");
        match parse(&f) {
            Parsed::Frame(r, n) => {
                assert_eq!(n, f.len());
                assert_eq!((r.seq, r.received_at_micros), (42, 7));
                assert_eq!(
                    (r.cluster.as_str(), r.identity.as_str()),
                    ("prod", "apiserver")
                );
                assert_eq!(r.body, b"{\"kind\":\"Event\"}");
            }
            other => panic!("{other:?}"),
        }
        for bit in 0..f.len() * 8 {
            let mut g = f.clone();
            g[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !matches!(parse(&g), Parsed::Frame(..)),
                "bit {bit} flipped went unnoticed"
            );
        }
        assert!(matches!(parse(&f[..f.len() - 1]), Parsed::Short(_)));
        assert!(matches!(parse(&f[..5]), Parsed::Short(_)));
        assert!(matches!(parse(b"AL"), Parsed::Short(_)));
        assert!(matches!(parse(b"xy"), Parsed::Bad(_)));
    }
}
