//! Caps on the detectors' state keyed by what events say (principals, objects, finding
//! keys): whoever can send events can make such keys up by the million, so each map keeps
//! at most a fixed number of entries and, beyond, forgets the ones with the oldest event
//! time, counting what it forgot.
//!
//! Memory per entry (measured as the struct sizes plus typical string lengths):
//! - open finding window ([`crate::Folder`]): the finding (~0.5 KiB) plus up to 50 evidence
//!   ids (~2 KiB at most), about 1-3 KiB; cap [`MAX_FOLD_WINDOWS`];
//! - 403-burst principal: up to `threshold` (20) denials of ~70 bytes, about 1.5 KiB; cap
//!   [`MAX_BURST_PRINCIPALS`];
//! - RBAC object: its normalised rules and subjects, typically 0.5-4 KiB; cap
//!   [`MAX_RBAC_OBJECTS`].

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Open finding windows kept at most.
pub const MAX_FOLD_WINDOWS: usize = 20_000;
/// Principals the 403-burst detector tracks at most.
pub const MAX_BURST_PRINCIPALS: usize = 20_000;
/// RBAC objects whose state is kept at most.
pub const MAX_RBAC_OBJECTS: usize = 100_000;

/// Entries the detectors forgot because a cap was reached, by kind.
#[derive(Debug, Default)]
pub struct EvictionCounters {
    /// Finding windows closed early (their summaries were emitted).
    pub fold_windows: Arc<AtomicU64>,
    /// 403-burst principals forgotten.
    pub burst_principals: Arc<AtomicU64>,
    /// RBAC objects forgotten (a later change to one is compared with the baseline only).
    pub rbac_objects: Arc<AtomicU64>,
}

/// When `map` holds more than `cap` entries, removes the tenth of them with the oldest
/// `time` and returns them. Amortised cost per insertion is constant.
pub(crate) fn evict_oldest<K, V>(
    map: &mut HashMap<K, V>,
    cap: usize,
    counter: &AtomicU64,
    time: impl Fn(&V) -> i64,
) -> Vec<(K, V)>
where
    K: Hash + Eq + Clone,
{
    if map.len() <= cap {
        return Vec::new();
    }
    let n = (map.len() - cap).max(cap / 10).min(map.len());
    let mut ages: Vec<(i64, &K)> = map.iter().map(|(k, v)| (time(v), k)).collect();
    ages.select_nth_unstable_by_key(n - 1, |(t, _)| *t);
    let doomed: Vec<K> = ages[..n].iter().map(|(_, k)| (*k).clone()).collect();
    counter.fetch_add(n as u64, Ordering::Relaxed);
    doomed
        .into_iter()
        .filter_map(|k| map.remove_entry(&k))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_tenth_goes_when_the_cap_is_passed() {
        let counter = AtomicU64::new(0);
        let mut m: HashMap<u32, i64> = (0..100).map(|i| (i, i64::from(i))).collect();
        assert!(evict_oldest(&mut m, 100, &counter, |v| *v).is_empty());
        m.insert(1000, 5_000);
        let gone = evict_oldest(&mut m, 100, &counter, |v| *v);
        assert_eq!(gone.len(), 10);
        assert!(gone.iter().all(|(k, _)| *k < 10), "{gone:?}");
        assert_eq!(m.len(), 91);
        assert!(m.contains_key(&1000));
        assert_eq!(counter.load(Ordering::Relaxed), 10);
    }
}
