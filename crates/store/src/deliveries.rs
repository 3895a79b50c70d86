//! Reading the delivery log view: one delivery, its attempts, a page of a subscription's or an
//! event's deliveries, what is pending; and retention of finished deliveries.

use std::sync::atomic::Ordering;

use sled::Transactional;
use uuid::Uuid;
use webhookd_core::delivery::{AttemptRecord, Delivery, DeliveryState};

use crate::keys::{event_entry, event_prefix, subscription_entry, subscription_prefix};
use crate::{decode, Result, Store};

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
        self.attempts
            .scan_prefix(id.as_bytes())
            .map(|item| {
                let (k, v) = item?;
                decode(&k, &v)
            })
            .collect()
    }

    /// Removes up to `batch` finished deliveries (delivered, failed, misconfigured) that ended
    /// before `cutoff_ms`, with their attempt logs and index entries; returns how many. Pending
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
            let trees = (&self.deliveries, &self.delivery_index, &self.finished_index, &self.attempts);
            removed += trees.transaction(|(records, index, done, log)| {
                let mut pruned = 0;
                for key in group {
                    // Re-checked inside the transaction: a redelivery that commits meanwhile
                    // (it removes the finished key) leaves this delivery alone.
                    if done.remove(key)?.is_none() {
                        continue;
                    }
                    let Some(id) = key.get(8..).and_then(|raw| Uuid::from_slice(raw).ok()) else { continue };
                    let Some(bytes) = records.get(id.as_bytes())? else { continue };
                    let d: Delivery = decode(id.as_bytes(), &bytes)
                        .map_err(sled::transaction::ConflictableTransactionError::Abort)?;
                    if d.state == DeliveryState::Pending {
                        continue;
                    }
                    for n in 1..=d.attempts {
                        log.remove(attempt_key(&id, n))?;
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
        self.deliveries.get(id.as_bytes())?.map(|v| decode(id.as_bytes(), &v)).transpose()
    }

    /// All deliveries of an event.
    pub fn deliveries_of_event(&self, event_id: &Uuid) -> Result<Vec<Delivery>> {
        self.indexed(event_prefix(event_id))
    }

    /// All deliveries of a subscription, oldest first.
    pub fn deliveries_of_subscription(&self, subscription_id: &str) -> Result<Vec<Delivery>> {
        self.indexed(subscription_prefix(subscription_id))
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

pub(crate) fn attempt_key(id: &Uuid, attempt: u32) -> Vec<u8> {
    let mut key = id.as_bytes().to_vec();
    key.extend_from_slice(&attempt.to_be_bytes());
    key
}
