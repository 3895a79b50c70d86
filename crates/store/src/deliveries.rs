//! Reading the delivery log view: one delivery, its attempts, a page of a subscription's or an
//! event's deliveries, what is pending; and retention of finished deliveries.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use sled::Transactional;
use uuid::Uuid;
use webhookd_core::delivery::{AttemptRecord, Delivery, DeliveryState};

use crate::keys::{event_entry, event_prefix, subscription_entry, subscription_prefix};
use crate::{Result, Store, StoreError};

/// One delivery in the view: as last logged, with every attempt logged for it, in order.
///
/// Stored as one compact value (a format byte, then postcard): one write per step of a delivery
/// instead of a record and an attempt record in two trees, and about a third of JSON's size.
/// Every replica folds every delivery of the service, so this is the view's whole cost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewRecord {
    /// The delivery as it stands.
    pub delivery: Delivery,
    /// Its attempts, by number.
    pub attempts: Vec<AttemptRecord>,
}

/// The format byte of a stored [`ViewRecord`].
const VIEW_FORMAT: u8 = 1;

impl ViewRecord {
    /// Adds `attempt`, or replaces the one of the same number (a repeated entry), keeping the
    /// attempts in order; whether that changed anything.
    pub fn note_attempt(&mut self, attempt: &AttemptRecord) -> bool {
        match self.attempts.binary_search_by_key(&attempt.attempt, |a| a.attempt) {
            Ok(at) if self.attempts[at] == *attempt => false,
            Ok(at) => {
                self.attempts[at] = attempt.clone();
                true
            }
            Err(at) => {
                self.attempts.insert(at, attempt.clone());
                true
            }
        }
    }

    /// The stored form.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![VIEW_FORMAT];
        // Plain structs of strings and numbers: postcard cannot fail on them.
        bytes.extend(postcard::to_stdvec(self).unwrap_or_default());
        bytes
    }

    /// Reads a stored record; an unreadable one is an error that names it, never skipped.
    pub(crate) fn decode(id: &Uuid, bytes: &[u8]) -> Result<ViewRecord> {
        let corrupt = |reason: String| StoreError::Corrupt { key: format!("deliveries/{id}"), reason };
        match bytes.split_first() {
            Some((&VIEW_FORMAT, body)) => postcard::from_bytes(body).map_err(|e| corrupt(e.to_string())),
            Some((format, _)) => {
                Err(corrupt(format!("format {format} is not {VIEW_FORMAT}, the one this webhookd reads")))
            }
            None => Err(corrupt("empty".into())),
        }
    }
}

/// Whose deliveries to list.
#[derive(Clone, Copy, Debug)]
pub enum DeliveriesOf<'a> {
    /// A subscription's, oldest first.
    Subscription(&'a str),
    /// An event's.
    Event(&'a Uuid),
}

impl Store {
    /// The delivery log of one delivery: every attempt, in order.
    pub fn attempts_of(&self, id: &Uuid) -> Result<Vec<AttemptRecord>> {
        Ok(self.view_record(id)?.map(|r| r.attempts).unwrap_or_default())
    }

    /// One delivery with its attempts, as the view holds it.
    pub fn view_record(&self, id: &Uuid) -> Result<Option<ViewRecord>> {
        self.deliveries.get(id.as_bytes())?.map(|v| ViewRecord::decode(id, &v)).transpose()
    }

    /// Removes up to `batch` finished deliveries (delivered, failed, misconfigured) that ended
    /// before `cutoff_ms`, with their index entries; returns how many. Pending
    /// deliveries are never touched. Reads only the range it removes.
    pub fn prune_finished(&self, cutoff_ms: u64, batch: usize) -> Result<usize> {
        let end = cutoff_ms.to_be_bytes();
        let keys: Vec<sled::IVec> = self
            .finished_index
            .range(..end.as_slice())
            .keys()
            .take(batch)
            .collect::<std::result::Result<_, _>>()?;
        let mut removed = 0;
        // A few dozen deliveries per transaction: one pass through sled's global lock for each
        // group instead of one per delivery, short enough not to hold up claims and outcomes.
        for group in keys.chunks(PRUNE_GROUP) {
            let trees = (&self.deliveries, &self.delivery_index, &self.finished_index);
            removed += trees.transaction(|(records, index, done)| {
                let mut pruned = 0;
                for key in group {
                    // Re-checked inside the transaction: a redelivery that commits meanwhile
                    // (it removes the finished key) leaves this delivery alone.
                    if done.remove(key)?.is_none() {
                        continue;
                    }
                    let Some(id) = key.get(8..).and_then(|raw| Uuid::from_slice(raw).ok()) else { continue };
                    let Some(bytes) = records.get(id.as_bytes())? else { continue };
                    let d = ViewRecord::decode(&id, &bytes)
                        .map_err(sled::transaction::ConflictableTransactionError::Abort)?
                        .delivery;
                    if d.state == DeliveryState::Pending {
                        continue;
                    }
                    index.remove(event_entry(&d.event_id, &d.id))?;
                    index.remove(subscription_entry(&d.subscription_id, d.created_at_ms, &d.id))?;
                    records.remove(id.as_bytes())?;
                    pruned += 1;
                }
                Ok(pruned)
            })?;
        }
        Ok(removed)
    }

    /// One delivery by id.
    pub fn delivery(&self, id: &Uuid) -> Result<Option<Delivery>> {
        Ok(self.view_record(id)?.map(|r| r.delivery))
    }

    /// All deliveries of an event.
    pub fn deliveries_of_event(&self, event_id: &Uuid) -> Result<Vec<Delivery>> {
        self.indexed(event_prefix(event_id))
    }

    /// All deliveries of a subscription, oldest first.
    pub fn deliveries_of_subscription(&self, subscription_id: &str) -> Result<Vec<Delivery>> {
        self.indexed(subscription_prefix(subscription_id))
    }

    /// How many deliveries the view holds. It counts them (a scan): for tools, not the hot path.
    pub fn deliveries_held(&self) -> usize {
        self.deliveries.len()
    }

    /// Number of pending deliveries (including those in flight). O(1).
    pub fn pending_count(&self) -> usize {
        self.pending.load(Ordering::Relaxed).max(0) as usize
    }

    /// When the oldest pending delivery was created, unix milliseconds. One seek.
    pub fn oldest_pending_ms(&self) -> Result<Option<u64>> {
        let first = self.pending_index.first()?;
        Ok(first.and_then(|(k, _)| k.get(..8).and_then(|b| b.try_into().ok())).map(u64::from_be_bytes))
    }

    /// A page of the deliveries of a subscription (oldest first) or of an event, optionally only
    /// those in `state`. Reads only as far as the page needs.
    pub fn deliveries_page(
        &self,
        of: DeliveriesOf<'_>,
        state: Option<DeliveryState>,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<Delivery>> {
        let prefix = match of {
            DeliveriesOf::Subscription(id) => subscription_prefix(id),
            DeliveriesOf::Event(id) => event_prefix(id),
        };
        let mut out = Vec::new();
        let mut skipped = 0;
        for item in self.delivery_index.scan_prefix(&prefix) {
            if out.len() >= limit {
                break;
            }
            let (key, _) = item?;
            let Some(raw) = key.get(key.len().saturating_sub(16)..) else {
                continue;
            };
            let Ok(id) = Uuid::from_slice(raw) else { continue };
            let Some(d) = self.delivery(&id)? else { continue };
            if state.is_some_and(|s| s != d.state) {
                continue;
            }
            if skipped < offset {
                skipped += 1;
                continue;
            }
            out.push(d);
        }
        Ok(out)
    }

    fn indexed(&self, prefix: Vec<u8>) -> Result<Vec<Delivery>> {
        let mut out = Vec::new();
        for item in self.delivery_index.scan_prefix(&prefix) {
            let (key, _) = item?;
            let Some(raw) = key.get(key.len().saturating_sub(16)..) else {
                continue;
            };
            let Ok(id) = Uuid::from_slice(raw) else { continue };
            if let Some(d) = self.delivery(&id)? {
                out.push(d);
            }
        }
        Ok(out)
    }
}

/// Deliveries removed per retention transaction.
const PRUNE_GROUP: usize = 64;

/// Finished-index key: finish time (big-endian), then id.
pub(crate) fn finished_key(d: &Delivery) -> Vec<u8> {
    let mut key = d.finished_at_ms.unwrap_or(0).to_be_bytes().to_vec();
    key.extend_from_slice(d.id.as_bytes());
    key
}

/// Pending-index key: creation time (big-endian), then id.
pub(crate) fn pending_key(d: &Delivery) -> Vec<u8> {
    let mut key = d.created_at_ms.to_be_bytes().to_vec();
    key.extend_from_slice(d.id.as_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use webhookd_core::subscription::Api;

    fn pending() -> Delivery {
        Delivery { api: Api::Obp, trigger: "balance_changed".into(), ..Delivery::fixture() }
    }

    fn attempt(n: u32, status: u16) -> AttemptRecord {
        AttemptRecord {
            attempt: n,
            at_ms: u64::from(n),
            duration_ms: 1,
            status: Some(status),
            response_excerpt: String::new(),
            error: None,
            outcome: DeliveryState::Pending,
        }
    }

    #[test]
    fn attempts_stay_in_order_and_a_repeat_replaces_itself() {
        let mut record = ViewRecord { delivery: pending(), attempts: Vec::new() };
        assert!(record.note_attempt(&attempt(2, 503)));
        assert!(record.note_attempt(&attempt(1, 503)));
        assert!(!record.note_attempt(&attempt(2, 503)), "the same attempt again changes nothing");
        assert!(record.note_attempt(&attempt(2, 500)));
        let seen: Vec<_> = record.attempts.iter().map(|a| (a.attempt, a.status)).collect();
        assert_eq!(seen, [(1, Some(503)), (2, Some(500))]);
    }

    #[test]
    fn a_record_reads_back_and_an_unreadable_one_names_its_delivery() {
        let record = ViewRecord { delivery: pending(), attempts: vec![attempt(1, 503)] };
        let id = record.delivery.id;
        let bytes = record.encode();
        assert_eq!(ViewRecord::decode(&id, &bytes).unwrap(), record);
        assert!(bytes.len() < serde_json::to_vec(&record).unwrap().len() / 2, "{} bytes", bytes.len());
        for (bad, why) in [(&bytes[..bytes.len() / 2], ""), (&[9, 1, 2][..], "format 9"), (&[][..], "empty")]
        {
            match ViewRecord::decode(&id, bad) {
                Err(StoreError::Corrupt { key, reason }) => {
                    assert_eq!(key, format!("deliveries/{id}"));
                    assert!(reason.contains(why), "{reason}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn the_store_stops_at_an_unreadable_delivery_instead_of_skipping_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = pending().id;
        store.deliveries.insert(id.as_bytes(), &[VIEW_FORMAT, 0xff, 0xff][..]).unwrap();
        assert!(matches!(store.delivery(&id), Err(StoreError::Corrupt { .. })));
        assert!(matches!(store.attempts_of(&id), Err(StoreError::Corrupt { .. })));
    }
}
