//! Drops events the apiserver resent: it retries a whole batch after a timeout or non-2xx
//! even when the first attempt was stored, so the same event can arrive several times.
//!
//! Keys are the decoder's row digests (cluster + the event's exact bytes, 128 bits, so a
//! collision that would drop a real event is out of reach). A key is remembered for a
//! window of event arrival time (the apiserver gives up on a batch within minutes), and the
//! number of keys is capped so memory stays bounded.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// The digests are already uniformly random: hashing them again would only cost time.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64 ^ (v >> 64) as u64;
    }
}

/// Remembers recently seen event digests.
pub(crate) struct Deduplicator {
    seen: HashSet<u128, BuildHasherDefault<DigestHasher>>,
    order: VecDeque<(i64, u128)>,
    window_micros: i64,
    max_keys: usize,
}

impl Deduplicator {
    /// Keys are kept for `window_micros` of arrival time, at most `max_keys` of them.
    pub fn new(window_micros: i64, max_keys: usize) -> Self {
        Self {
            seen: HashSet::default(),
            order: VecDeque::new(),
            window_micros,
            max_keys,
        }
    }

    /// Records `digest` as seen at `at_micros`; true if it was not seen within the window.
    pub fn first_sighting(&mut self, digest: u128, at_micros: i64) -> bool {
        self.evict(at_micros);
        if !self.seen.insert(digest) {
            return false;
        }
        self.order.push_back((at_micros, digest));
        true
    }

    fn evict(&mut self, now_micros: i64) {
        while let Some(&(at, digest)) = self.order.front() {
            if self.order.len() < self.max_keys && now_micros - at <= self.window_micros {
                break;
            }
            self.seen.remove(&digest);
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_inside_the_window_are_dropped_and_old_keys_expire() {
        let mut d = Deduplicator::new(1_000, 10);
        assert!(d.first_sighting(1, 0));
        assert!(!d.first_sighting(1, 500));
        assert!(d.first_sighting(2, 900));
        // Key 1 is now older than the window: seen again, it counts as new.
        assert!(d.first_sighting(1, 1_500));
        assert!(!d.first_sighting(2, 1_500));
    }

    #[test]
    fn memory_is_capped() {
        let mut d = Deduplicator::new(i64::MAX, 3);
        for k in 0..10u128 {
            assert!(d.first_sighting(k, 0));
        }
        assert!(d.seen.len() <= 3 && d.order.len() <= 3);
    }
}
