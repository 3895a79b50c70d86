//! Snapshots in the catalog log: a dump of the whole catalog split into parts
//! ([`SnapshotPart`] records), and put back together by a replica that starts without the
//! stream's first records.

use std::collections::HashMap;

use base64::Engine;
use sha2::{Digest, Sha256};
use tracing::warn;
use uuid::Uuid;
use webhookd_core::catalog::SnapshotPart;
use webhookd_store::CatalogPosition;

/// SHA-256 of a dump, lowercase hex.
pub fn digest(dump: &[u8]) -> String {
    Sha256::digest(dump).iter().map(|b| format!("{b:02x}")).collect()
}

/// A dump as the `data` of its parts: at most `part_bytes` of it each, base64 (at least one).
pub fn split(dump: &[u8], part_bytes: u64) -> Vec<String> {
    let size = usize::try_from(part_bytes.max(1)).unwrap_or(usize::MAX);
    let chunks: Vec<String> =
        dump.chunks(size).map(|c| base64::engine::general_purpose::STANDARD.encode(c)).collect();
    if chunks.is_empty() {
        vec![String::new()]
    } else {
        chunks
    }
}

/// Puts snapshots together from their parts as the stream delivers them; answers the first
/// complete one that is usable: every part there and decoded, the digest right, and its
/// position within the stream (at or after its first retained offset, so that the record it
/// ends at can still be read). Anything else is skipped, with a warning, for a later one.
pub struct Assembler {
    first_offset: u64,
    parts: HashMap<Uuid, Vec<Option<Vec<u8>>>>,
}

impl Assembler {
    /// For a stream whose first retained record is at `first_offset`.
    pub fn new(first_offset: u64) -> Assembler {
        Assembler { first_offset, parts: HashMap::new() }
    }

    /// Takes one part; answers a whole snapshot and the position it was taken at once one is.
    pub fn add(&mut self, part: SnapshotPart) -> Option<(CatalogPosition, Vec<u8>)> {
        if part.of_offset < self.first_offset || part.parts == 0 || part.part >= part.parts {
            return None;
        }
        let slots = self.parts.entry(part.id).or_insert_with(|| vec![None; part.parts as usize]);
        if slots.len() != part.parts as usize {
            warn!(snapshot = %part.id, "catalog snapshot parts disagree on their count; that snapshot is skipped");
            self.parts.remove(&part.id);
            return None;
        }
        match base64::engine::general_purpose::STANDARD.decode(&part.data) {
            Ok(bytes) => slots[part.part as usize] = Some(bytes),
            Err(e) => {
                warn!(snapshot = %part.id, error = %e, "a catalog snapshot part does not decode; that snapshot is skipped");
                self.parts.remove(&part.id);
                return None;
            }
        }
        if slots.iter().any(Option::is_none) {
            return None;
        }
        let whole: Vec<u8> = self.parts.remove(&part.id)?.into_iter().flatten().flatten().collect();
        if digest(&whole) != part.sha256 {
            warn!(snapshot = %part.id, "a catalog snapshot does not match its digest; it is skipped");
            return None;
        }
        let position = CatalogPosition {
            epoch: part.epoch,
            offset: part.of_offset,
            change_id: part.of_change_id,
            changes: part.changes,
        };
        Some((position, whole))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(dump: &[u8], of_offset: u64, part_bytes: u64) -> Vec<SnapshotPart> {
        let (id, sha256) = (Uuid::new_v4(), digest(dump));
        let data = split(dump, part_bytes);
        let n = data.len() as u32;
        data.into_iter()
            .enumerate()
            .map(|(i, data)| SnapshotPart {
                id,
                epoch: Uuid::nil(),
                of_offset,
                of_change_id: Uuid::nil(),
                changes: 0,
                part: i as u32,
                parts: n,
                sha256: sha256.clone(),
                data,
            })
            .collect()
    }

    #[test]
    fn parts_in_any_order_and_interleaved_with_another_snapshot_give_the_dump_back() {
        let a: Vec<u8> = (0..100u8).collect();
        let b = vec![7u8; 33];
        let mut from_a = parts(&a, 10, 7);
        let from_b = parts(&b, 12, 5);
        assert_eq!((from_a.len(), from_b.len()), (15, 7));
        from_a.reverse();
        let mut assembler = Assembler::new(5);
        let mut done = Vec::new();
        for (x, y) in from_a
            .into_iter()
            .zip(from_b.into_iter().chain(std::iter::repeat_with(|| parts(&[], 0, 1).remove(0))))
        {
            done.extend(assembler.add(x));
            done.extend(assembler.add(y));
        }
        let got: Vec<(u64, Vec<u8>)> = done.into_iter().map(|(p, d)| (p.offset, d)).collect();
        assert_eq!(got, vec![(12, b), (10, a)]);
    }

    #[test]
    fn a_snapshot_that_does_not_add_up_is_skipped_for_the_next() {
        let dump = b"a catalog".to_vec();
        let mut assembler = Assembler::new(5);
        // Its digest is wrong.
        let mut wrong = parts(&dump, 6, 4);
        for p in &mut wrong {
            p.sha256 = digest(b"something else");
        }
        // One part is not base64.
        let mut garbled = parts(&dump, 7, 4);
        garbled[1].data = "not base64!".into();
        // It was taken before the stream's first retained record.
        let early = parts(&dump, 4, 4);
        for p in wrong.into_iter().chain(garbled).chain(early) {
            assert!(assembler.add(p).is_none());
        }
        let good = parts(&dump, 8, 4);
        let answers: Vec<_> = good.into_iter().filter_map(|p| assembler.add(p)).collect();
        assert_eq!(answers.len(), 1);
        assert_eq!((answers[0].0.offset, &answers[0].1), (8, &dump));
    }
}
