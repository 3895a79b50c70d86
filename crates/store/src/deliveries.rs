//! Reading the delivery log view: one delivery, its attempts, a page of a subscription's or an
//! event's deliveries, what is pending; and retention of finished deliveries.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use sled::Transactional;
use uuid::Uuid;
use webhookd_core::delivery::{AttemptRecord, Delivery, DeliveryState};

use crate::keys::{event_key, prefix_end, subscription_entry, subscription_prefix};
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

/// What the view keeps per event (one index entry, not one per delivery): the first 6 bytes
/// its deliveries' ids share (the event's time, see `webhookd_core::ids::delivery_id`), where
/// they lie together in the delivery tree, and how many of them the view holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EventEntry {
    /// The ids' shared first bytes.
    pub time: [u8; 6],
    /// Deliveries of the event held.
    pub count: u32,
}

impl EventEntry {
    /// The entry of a first delivery `id`.
    pub fn of(id: &Uuid) -> EventEntry {
        let mut time = [0; 6];
        time.copy_from_slice(&id.as_bytes()[..6]);
        EventEntry { time, count: 0 }
    }

    pub fn encode(&self) -> [u8; 10] {
        let mut out = [0; 10];
        out[..6].copy_from_slice(&self.time);
        out[6..].copy_from_slice(&self.count.to_be_bytes());
        out
    }

    pub fn decode(key: &[u8], bytes: &[u8]) -> std::result::Result<EventEntry, StoreError> {
        let (Some(time), Some(count)) = (bytes.get(..6), bytes.get(6..10)) else {
            return Err(StoreError::Corrupt {
                key: format!(
                    "event {}",
                    key.get(1..).and_then(|id| Uuid::from_slice(id).ok()).unwrap_or_default()
                ),
                reason: format!("an event index entry of {} bytes, not 10", bytes.len()),
            });
        };
        let mut entry = EventEntry { time: [0; 6], count: 0 };
        entry.time.copy_from_slice(time);
        entry.count = u32::from_be_bytes(count.try_into().unwrap_or_default());
        Ok(entry)
    }
}

/// Adds `delta` deliveries to the entries of the events in `changes` (event id -> entry for a
/// new one, delta), inside a fold's or a prune's transaction; an entry left at 0 is removed.
pub(crate) fn count_event_deliveries(
    index: &sled::transaction::TransactionalTree,
    changes: &std::collections::HashMap<Uuid, (EventEntry, i64)>,
) -> std::result::Result<(), sled::transaction::ConflictableTransactionError<StoreError>> {
    for (event_id, (new, delta)) in changes {
        let key = event_key(event_id);
        let mut entry = match index.get(&key)? {
            Some(bytes) => EventEntry::decode(&key, &bytes)
                .map_err(sled::transaction::ConflictableTransactionError::Abort)?,
            None => *new,
        };
        entry.count = (i64::from(entry.count) + delta).clamp(0, i64::from(u32::MAX)) as u32;
        if entry.count == 0 {
            index.remove(key)?;
        } else {
            index.insert(key, &entry.encode())?;
        }
    }
    Ok(())
}

/// The format byte of a stored [`ViewRecord`]. 2: deliveries carry their retry schedule.
const VIEW_FORMAT: u8 = 2;

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
            // No release wrote format 1; a data dir from a development build before format 2
            // is a view to rebuild, not data to keep.
            Some((1, _)) => Err(corrupt(format!(
                "format 1 (before deliveries kept their retry schedule) is not {VIEW_FORMAT}, the one this \
                 webhookd reads: empty this replica's data dir and it rebuilds the view from the delivery \
                 log stream"
            ))),
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
    /// Those of any of these events (a Rabo `ev_` id stands for a few UUIDs), event by event.
    Events(&'a [Uuid]),
    /// Every delivery, in the order of their events' time (the order of the delivery tree).
    All,
}

/// Which deliveries of a [`DeliveriesOf`] a page shows.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeliveryFilter {
    /// Only those in this state.
    pub state: Option<DeliveryState>,
    /// Only those whose event happened at or after this time, unix milliseconds.
    pub since_ms: Option<u64>,
    /// Only those whose event happened before this time, unix milliseconds.
    pub until_ms: Option<u64>,
}

impl DeliveryFilter {
    fn admits(&self, d: &Delivery) -> bool {
        let at = u64::try_from(d.occurred_at_ms).unwrap_or(0);
        self.state.is_none_or(|s| s == d.state)
            && self.since_ms.is_none_or(|since| at >= since)
            && self.until_ms.is_none_or(|until| at < until)
    }
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
    /// before `cutoff_ms`, with their index entries; returns how many. Pending deliveries are
    /// never touched.
    ///
    /// There is no index of finish times (one write less for every delivery folded): delivery
    /// ids begin with their event's time, so retention sweeps the delivery tree from its start
    /// up to the first delivery of an event at or after the cutoff, which cannot have finished
    /// before it (a delivery of an event dated ahead of this clock waits until the cutoff
    /// passes that date). A sweep goes on where the last call stopped, examining at most
    /// [`EXAMINED_PER_REMOVAL`] x `batch` deliveries a call, so deliveries still pending in the
    /// swept range cost each call a bounded amount, not the whole range again.
    pub fn prune_finished(&self, cutoff_ms: u64, batch: usize) -> Result<usize> {
        let stop = time_prefix(cutoff_ms);
        let budget = batch.saturating_mul(EXAMINED_PER_REMOVAL).max(1);
        let mut candidates = Vec::new();
        {
            let mut cursor = self.prune_cursor.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let from = cursor.take().unwrap_or_default();
            for (examined, item) in self.deliveries.range(from..).enumerate() {
                let (key, value) = item?;
                if key.get(..6).is_some_and(|time| time >= &stop[..]) {
                    break;
                }
                if candidates.len() >= batch || examined >= budget {
                    *cursor = Some(key);
                    break;
                }
                let id = Uuid::from_slice(&key).map_err(|e| StoreError::Corrupt {
                    key: format!("{key:?}"),
                    reason: format!("not a delivery id: {e}"),
                })?;
                if prunable(&ViewRecord::decode(&id, &value)?.delivery, cutoff_ms) {
                    candidates.push(id);
                }
            }
        }
        let mut removed = 0;
        // A few dozen deliveries per transaction: one pass through sled's global lock for each
        // group instead of one per delivery, short enough not to hold up the follower's folds.
        for group in candidates.chunks(PRUNE_GROUP) {
            let trees = (&self.deliveries, &self.delivery_index);
            removed += trees.transaction(|(records, index)| {
                let mut pruned = 0;
                let mut events = std::collections::HashMap::new();
                for id in group {
                    // Re-checked inside the transaction: an entry folded meanwhile (a
                    // redelivery) leaves this delivery alone.
                    let Some(bytes) = records.get(id.as_bytes())? else { continue };
                    let d = ViewRecord::decode(id, &bytes)
                        .map_err(sled::transaction::ConflictableTransactionError::Abort)?
                        .delivery;
                    if !prunable(&d, cutoff_ms) {
                        continue;
                    }
                    events.entry(d.event_id).or_insert((EventEntry::of(&d.id), 0)).1 -= 1;
                    index.remove(subscription_entry(&d.subscription_id, d.created_at_ms, &d.id))?;
                    records.remove(id.as_bytes())?;
                    pruned += 1;
                }
                count_event_deliveries(index, &events)?;
                Ok(pruned)
            })?;
        }
        Ok(removed)
    }

    /// One delivery by id.
    pub fn delivery(&self, id: &Uuid) -> Result<Option<Delivery>> {
        Ok(self.view_record(id)?.map(|r| r.delivery))
    }

    /// All deliveries of an event, in id order.
    pub fn deliveries_of_event(&self, event_id: &Uuid) -> Result<Vec<Delivery>> {
        self.of_event(event_id)?.collect()
    }

    /// The deliveries of an event: its index entry says where their ids lie together in the
    /// delivery tree (they share the event's time); those of other events there are skipped.
    fn of_event(&self, event_id: &Uuid) -> Result<impl Iterator<Item = Result<Delivery>> + '_> {
        let key = event_key(event_id);
        let time = match self.delivery_index.get(&key)? {
            Some(bytes) => Some(EventEntry::decode(&key, &bytes)?.time),
            None => None,
        };
        let range = time.map(|time| match prefix_end(&time) {
            Some(end) => self.deliveries.range(time.to_vec()..end),
            None => self.deliveries.range(time.to_vec()..),
        });
        let event_id = *event_id;
        Ok(range.into_iter().flatten().filter_map(move |item| {
            let record = item.map_err(StoreError::from).and_then(|(key, value)| {
                let id = Uuid::from_slice(&key).map_err(|e| StoreError::Corrupt {
                    key: format!("{key:?}"),
                    reason: format!("not a delivery id: {e}"),
                })?;
                ViewRecord::decode(&id, &value)
            });
            match record {
                Ok(r) if r.delivery.event_id == event_id => Some(Ok(r.delivery)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            }
        }))
    }

    /// All deliveries of a subscription, oldest first.
    pub fn deliveries_of_subscription(&self, subscription_id: &str) -> Result<Vec<Delivery>> {
        self.of_subscription(subscription_id).collect()
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

    /// A page of the deliveries of a subscription (oldest first), of events, or of all (in event
    /// time order), those `filter` admits. Reads only as far as the page needs; for all
    /// deliveries it starts at `filter.since_ms` and stops at `filter.until_ms` (delivery ids
    /// begin with their event's time).
    pub fn deliveries_page(
        &self,
        of: DeliveriesOf<'_>,
        filter: &DeliveryFilter,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<Delivery>> {
        let all: Box<dyn Iterator<Item = Result<Delivery>> + '_> = match of {
            DeliveriesOf::Subscription(id) => Box::new(self.of_subscription(id)),
            DeliveriesOf::Events(ids) => {
                let mut chained: Box<dyn Iterator<Item = Result<Delivery>> + '_> =
                    Box::new(std::iter::empty());
                for id in ids {
                    chained = Box::new(chained.chain(self.of_event(id)?));
                }
                chained
            }
            DeliveriesOf::All => Box::new(self.in_event_time(filter.since_ms, filter.until_ms)),
        };
        let mut out = Vec::new();
        let mut skipped = 0;
        for d in all {
            if out.len() >= limit {
                break;
            }
            let d = d?;
            if !filter.admits(&d) {
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

    /// Every delivery of events from `since_ms` (inclusive) to `until_ms` (exclusive), in the
    /// delivery tree's order: their events' time.
    fn in_event_time(
        &self,
        since_ms: Option<u64>,
        until_ms: Option<u64>,
    ) -> impl Iterator<Item = Result<Delivery>> + '_ {
        let since = since_ms.unwrap_or(0);
        let from = time_prefix(since).to_vec();
        let range = match until_ms {
            // An end before the start is an empty range, not a reversed one.
            Some(until) => self.deliveries.range(from..time_prefix(until.max(since)).to_vec()),
            None => self.deliveries.range(from..),
        };
        range.map(|item| {
            let (key, value) = item?;
            let id = Uuid::from_slice(&key).map_err(|e| StoreError::Corrupt {
                key: format!("{key:?}"),
                reason: format!("not a delivery id: {e}"),
            })?;
            Ok(ViewRecord::decode(&id, &value)?.delivery)
        })
    }

    /// The deliveries of a subscription, oldest first, through its index entries.
    fn of_subscription(&self, subscription_id: &str) -> impl Iterator<Item = Result<Delivery>> + '_ {
        self.delivery_index.scan_prefix(subscription_prefix(subscription_id)).filter_map(move |item| {
            let key = match item {
                Ok((key, _)) => key,
                Err(e) => return Some(Err(e.into())),
            };
            let id = Uuid::from_slice(key.get(key.len().saturating_sub(16)..)?).ok()?;
            self.delivery(&id).transpose()
        })
    }
}

/// Deliveries removed per retention transaction.
const PRUNE_GROUP: usize = 64;

/// How many deliveries retention examines per delivery it may remove, at most, in one call.
pub const EXAMINED_PER_REMOVAL: usize = 16;

/// Whether retention removes `d` at `cutoff_ms`: finished before it.
fn prunable(d: &Delivery, cutoff_ms: u64) -> bool {
    d.state != DeliveryState::Pending && d.finished_at_ms.unwrap_or(0) < cutoff_ms
}

/// The first 6 bytes of the ids of deliveries of events at `ms` (see
/// `webhookd_core::ids::delivery_id`).
fn time_prefix(ms: u64) -> [u8; 6] {
    let mut out = [0; 6];
    out.copy_from_slice(&ms.min((1 << 48) - 1).to_be_bytes()[2..]);
    out
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
        // A record of the format before deliveries kept their schedule says what to do.
        store.deliveries.insert(id.as_bytes(), &[1, 0, 0][..]).unwrap();
        let error = store.delivery(&id).unwrap_err().to_string();
        assert!(error.contains("format 1") && error.contains("empty this replica's data dir"), "{error}");
    }
}
