//! How far each Kafka partition is archived, as the manifest attests: the newest
//! `through_offset` of every (topic, partition) over the chain. A consumer resumes from it
//! (the manifest, not Kafka's committed offsets, is the source of truth), and a commit is
//! checked against it so no offset is archived by two records.
//!
//! Kept in memory and brought up to date by reading only the records written since it was
//! last read: the whole chain is read once per process.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::archive::Archive;
use crate::error::ArchiveError;
use crate::manifest::{KafkaRange, ManifestRecord, SourceMark};

/// The archived offsets per (topic, partition) as of one manifest record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaProgress {
    /// The newest record read into it (0: none).
    pub as_of_sequence: u64,
    /// The last archived offset of each (topic, partition).
    pub through: BTreeMap<(String, i32), i64>,
}

impl KafkaProgress {
    /// Adds one record's Kafka ranges (records must come in sequence order).
    pub fn apply(&mut self, record: &ManifestRecord) {
        if record.sequence <= self.as_of_sequence {
            return;
        }
        if let Some(SourceMark::Kafka { ranges, .. }) = &record.source {
            for r in ranges {
                let e = self
                    .through
                    .entry((r.topic.clone(), r.partition))
                    .or_insert(r.through_offset);
                *e = (*e).max(r.through_offset);
            }
        }
        self.as_of_sequence = record.sequence;
    }

    /// The first of `ranges` that overlaps what is archived already, with the offset the
    /// partition is archived through.
    pub fn overlap<'a>(&self, ranges: &'a [KafkaRange]) -> Option<(&'a KafkaRange, i64)> {
        ranges.iter().find_map(|r| {
            self.through
                .get(&(r.topic.clone(), r.partition))
                .filter(|&&through| through >= r.from_offset)
                .map(|&through| (r, through))
        })
    }
}

/// The archive's copy of [`KafkaProgress`], shared by its clones.
#[derive(Debug, Default)]
pub(crate) struct ProgressCache(Mutex<KafkaProgress>);

impl ProgressCache {
    fn snapshot(&self) -> KafkaProgress {
        // A poisoned lock only means a panic elsewhere while applying records in order:
        // the value is still a consistent prefix of the chain.
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn merge(&self, newer: KafkaProgress) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if newer.as_of_sequence > g.as_of_sequence {
            *g = newer;
        }
    }

    /// Brings the cache up to record `through` (reading the records after the newest it
    /// has) and returns it.
    pub(crate) async fn up_to(
        &self,
        archive: &Archive,
        through: u64,
    ) -> Result<KafkaProgress, ArchiveError> {
        let mut p = self.snapshot();
        if through > p.as_of_sequence {
            for (record, _) in archive
                .records_between(p.as_of_sequence + 1, through)
                .await?
            {
                p.apply(&record);
            }
            self.merge(p.clone());
        }
        Ok(p)
    }

    /// Adds a record this process just wrote.
    pub(crate) fn wrote(&self, record: &ManifestRecord) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if record.sequence == g.as_of_sequence + 1 {
            g.apply(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, ranges: &[(&str, i32, i64, i64)]) -> ManifestRecord {
        let mut r = ManifestRecord::new(seq, None, "w", vec![], vec![]);
        r.source = Some(SourceMark::Kafka {
            group: "g".into(),
            ranges: ranges
                .iter()
                .map(|&(t, p, a, b)| KafkaRange {
                    topic: t.into(),
                    partition: p,
                    from_offset: a,
                    through_offset: b,
                })
                .collect(),
        });
        r
    }

    #[test]
    fn a_range_overlapping_an_archived_one_is_found_and_a_following_one_is_not() {
        let mut p = KafkaProgress::default();
        p.apply(&record(1, &[("audit", 0, 0, 99), ("audit", 1, 0, 9)]));
        p.apply(&record(2, &[("audit", 0, 100, 199)]));
        assert_eq!(p.through[&("audit".into(), 0)], 199);
        let next = record(3, &[("audit", 0, 200, 250), ("audit", 1, 10, 20)]);
        let Some(SourceMark::Kafka { ranges, .. }) = &next.source else {
            unreachable!()
        };
        assert_eq!(p.overlap(ranges), None);
        let zombie = [KafkaRange {
            topic: "audit".into(),
            partition: 0,
            from_offset: 150,
            through_offset: 260,
        }];
        let (r, through) = p.overlap(&zombie).unwrap();
        assert_eq!((r.partition, through), (0, 199));
        // Same partition number of another topic is another partition.
        let other = [KafkaRange {
            topic: "other".into(),
            ..zombie[0].clone()
        }];
        assert_eq!(p.overlap(&other), None);
        // Records already applied are not applied twice.
        p.apply(&record(2, &[("audit", 0, 100, 500)]));
        assert_eq!(p.through[&("audit".into(), 0)], 199);
    }
}
