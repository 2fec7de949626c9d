//! A file's bytes gathered in memory with their SHA-256 taken as they are written, so the
//! commit that names the file does not read it all again (on an async worker, where a
//! 64 MB file held it ~40 ms, or at the end of an ingest, where it was serial work).

use sha2::{Digest, Sha256};

/// Bytes written, hashed as they arrive.
pub struct HashedBuffer {
    bytes: Vec<u8>,
    sha256: Sha256,
}

impl HashedBuffer {
    /// An empty buffer with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(capacity),
            sha256: Sha256::new(),
        }
    }

    /// The bytes written and their SHA-256.
    pub fn finish(self) -> (Vec<u8>, [u8; 32]) {
        (self.bytes, self.sha256.finalize().into())
    }
}

impl std::io::Write for HashedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        self.sha256.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use std::io::Write;

    use super::*;

    #[test]
    fn the_digest_is_of_every_byte_written_in_order() {
        let mut b = HashedBuffer::with_capacity(4);
        b.write_all(b"PAR1").unwrap();
        b.write_all(&[7u8; 10_000]).unwrap();
        b.write_all(b"").unwrap();
        b.write_all(b"PAR1").unwrap();
        let (bytes, digest) = b.finish();
        let mut whole = b"PAR1".to_vec();
        whole.extend_from_slice(&[7u8; 10_000]);
        whole.extend_from_slice(b"PAR1");
        assert_eq!(bytes, whole);
        let expected: [u8; 32] = Sha256::digest(&whole).into();
        assert_eq!(digest, expected);
        let (empty, d) = HashedBuffer::with_capacity(0).finish();
        assert!(empty.is_empty());
        assert_eq!(
            hex::encode(d),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
