//! The durable outbox: delivery records, the due-time tree, claims and outcomes.
//!
//! The due tree is keyed by destination, then due time, then delivery id. "What is due for this
//! destination" is a range scan, "when is its next item due" is one seek, and a saturated
//! destination is simply not scanned until it has a free slot, so it costs nothing.
//!
//! A claim moves the due entry to a lease time (when the attempt must have ended) without
//! flushing: if the process dies mid-attempt, the entry becomes due again at the lease time and
//! the attempt is repeated (a bounded duplicate, never a loss).

use std::sync::atomic::Ordering;

use sled::Transactional;
use uuid::Uuid;
use webhookd_core::delivery::{AttemptRecord, Delivery, DeliveryState};

use crate::keys::{
    due_entry, due_prefix, event_entry, event_prefix, parse_due_entry, prefix_end, subscription_entry,
    subscription_prefix,
};
use crate::{add_pending, decode, encode, Result, Store, StoreError};

/// Whose deliveries to list.
#[derive(Clone, Copy, Debug)]
pub enum DeliveriesOf<'a> {
    /// A subscription's, oldest first.
    Subscription(&'a str),
    /// An event's.
    Event(&'a Uuid),
}

/// A delivery just created in the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Created {
    /// Its destination (`host:port`).
    pub destination: String,
    /// When its first attempt is due, unix milliseconds.
    pub due_ms: u64,
    /// Its API.
    pub api: webhookd_core::subscription::Api,
}

/// A delivery claimed for one attempt.
#[derive(Debug)]
pub struct Claimed {
    /// The delivery as stored when claimed.
    pub delivery: Delivery,
    lease_key: sled::IVec,
}

impl Store {
    /// Writes new deliveries in one atomic transaction, skipping those that exist already (a
    /// redelivered message); returns what was created. Not flushed:
    /// the caller flushes once for a whole batch before it acknowledges anything.
    pub fn insert_deliveries(&self, deliveries: &[Delivery]) -> Result<Vec<Created>> {
        if deliveries.is_empty() {
            return Ok(Vec::new());
        }
        let trees = (&self.deliveries, &self.due, &self.delivery_index, &self.pending_index, &self.meta);
        let created = trees.transaction(|(records, due, index, pending, meta)| {
            let mut created = Vec::new();
            for d in deliveries {
                if records.get(d.id.as_bytes())?.is_some() {
                    continue;
                }
                let due_ms = d.next_attempt_at_ms.unwrap_or(d.created_at_ms);
                records.insert(d.id.as_bytes(), encode(d))?;
                due.insert(due_entry(&d.destination, due_ms, &d.id), &[])?;
                index.insert(event_entry(&d.event_id, &d.id), &[])?;
                index.insert(subscription_entry(&d.subscription_id, d.created_at_ms, &d.id), &[])?;
                pending.insert(pending_key(d), &[])?;
                created.push(Created { destination: d.destination.clone(), due_ms, api: d.api });
            }
            add_pending(meta, created.len() as i64)?;
            Ok(created)
        })?;
        self.pending.fetch_add(created.len() as i64, Ordering::Relaxed);
        self.unclaimed.created(created.len());
        Ok(created)
    }

    /// Every destination with due entries, and its earliest due time (used at start-up).
    ///
    /// Skips from one destination to the next, so it reads one entry per destination.
    pub fn due_destinations(&self) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        loop {
            let Some((key, _)) = self.due.range(from.as_slice()..).next().transpose()? else {
                break;
            };
            let Some((destination, due, _)) = parse_due_entry(&key) else {
                // Not one of ours: skip it rather than stall the queue.
                from = next_key(&key);
                continue;
            };
            let prefix = due_prefix(&destination);
            out.push((destination, due));
            match prefix_end(&prefix) {
                Some(end) => from = end,
                None => break,
            }
        }
        Ok(out)
    }

    /// The earliest due time of a destination's entries (leases included).
    pub fn first_due(&self, destination: &str) -> Result<Option<u64>> {
        let first = self.due.scan_prefix(due_prefix(destination)).next().transpose()?;
        Ok(first.and_then(|(key, _)| parse_due_entry(&key)).map(|(_, due, _)| due))
    }

    /// Claims up to `limit` entries of `destination` due at or before `now_ms`, leasing each
    /// until `lease_until_ms`, and writes each claimed delivery's next attempt into the delivery
    /// log as started ([`AttemptRecord::IN_FLIGHT`]).
    ///
    /// Flush before sending (the engine does): then every attempt ever sent is in the log. A
    /// started attempt found at the next claim was interrupted (webhookd stopped during it, or
    /// its outcome record was lost): it stays in the log as such ([`AttemptRecord::INTERRUPTED`])
    /// and counts as an attempt.
    pub fn claim_due(
        &self,
        destination: &str,
        now_ms: u64,
        limit: usize,
        lease_until_ms: u64,
    ) -> Result<Vec<Claimed>> {
        let prefix = due_prefix(destination);
        let mut end = prefix.clone();
        end.extend_from_slice(&now_ms.saturating_add(1).to_be_bytes());
        let mut candidates = Vec::new();
        let mut set_aside = Vec::new();
        for item in self.due.range(prefix.as_slice()..end.as_slice()) {
            if candidates.len() >= limit {
                break;
            }
            let (key, _) = item?;
            let Some((_, _, id)) = parse_due_entry(&key) else {
                set_aside.push(key);
                continue;
            };
            candidates.push((key, id));
        }
        let trees = (&self.due, &self.deliveries, &self.attempts);
        let claimed = trees.transaction(|(due, records, log)| {
            for key in &set_aside {
                due.remove(key)?;
            }
            let mut claimed = Vec::new();
            for (key, id) in &candidates {
                if due.remove(key)?.is_none() {
                    continue; // taken meanwhile
                }
                let Some(bytes) = records.get(id.as_bytes())? else { continue };
                let mut delivery = match decode::<Delivery>(id.as_bytes(), &bytes) {
                    Ok(d) => d,
                    Err(e) => {
                        // Set aside (its due entry goes) so one bad record cannot stall the queue.
                        tracing::error!(delivery_id = %id, error = %e, "undecodable delivery record set aside");
                        continue;
                    }
                };
                if delivery.state != DeliveryState::Pending {
                    continue;
                }
                let next = delivery.attempts + 1;
                if let Some(bytes) = log.get(attempt_key(id, next))? {
                    let mut interrupted = decode::<AttemptRecord>(id.as_bytes(), &bytes)
                        .unwrap_or_else(|_| AttemptRecord::started(next, now_ms));
                    interrupted.error = Some(AttemptRecord::INTERRUPTED.into());
                    log.insert(attempt_key(id, next), encode(&interrupted))?;
                    delivery.attempts = next;
                    records.insert(id.as_bytes(), encode(&delivery))?;
                }
                let started = AttemptRecord::started(delivery.attempts + 1, now_ms);
                log.insert(attempt_key(id, started.attempt), encode(&started))?;
                let lease_key = sled::IVec::from(due_entry(destination, lease_until_ms, id));
                due.insert(lease_key.clone(), &[])?;
                claimed.push(Claimed { delivery, lease_key });
            }
            Ok::<_, sled::transaction::ConflictableTransactionError<StoreError>>(claimed)
        })?;
        self.unclaimed.claimed(claimed.iter().filter(|c| c.delivery.attempts == 0).count());
        Ok(claimed)
    }

    /// Records the result of an attempt: the updated delivery, its log entry, its lease released
    /// and, when it is still pending, its next due entry. Atomic; not flushed (a lost outcome
    /// means one more attempt, never a lost delivery).
    pub fn record_attempt(
        &self,
        claimed: &Claimed,
        updated: &Delivery,
        attempt: &AttemptRecord,
    ) -> Result<()> {
        self.record_attempts(&[(claimed, updated, attempt)]).pop().unwrap_or(Ok(()))
    }

    /// Records the results of several attempts in one transaction (one pass through sled's
    /// global lock instead of one per attempt); each is checked and applied as
    /// [`Store::record_attempt`] would: a stale one gets [`StoreError::Conflict`] and changes
    /// nothing, the others are recorded. Returns one result per outcome, in order.
    pub fn record_attempts(&self, outcomes: &[(&Claimed, &Delivery, &AttemptRecord)]) -> Vec<Result<()>> {
        let trees = (
            &self.deliveries,
            &self.due,
            &self.attempts,
            &self.pending_index,
            &self.finished_index,
            &self.meta,
        );
        let committed = trees.transaction(|(records, due, log, pending, done, meta)| {
            let mut results = Vec::with_capacity(outcomes.len());
            let mut left_pending = 0i64;
            for (claimed, updated, attempt) in outcomes {
                // Only the current claim may record: if its lease was taken over (it outlived
                // the lease) or the delivery changed meanwhile, this outcome is stale and dropped.
                let current = records.get(updated.id.as_bytes())?;
                let unchanged = current.as_ref().is_some_and(|bytes| {
                    decode::<Delivery>(updated.id.as_bytes(), bytes).is_ok_and(|d| {
                        d.state == DeliveryState::Pending && d.attempts == claimed.delivery.attempts
                    })
                });
                // Checked before the lease is removed, so a stale outcome changes nothing.
                if !unchanged || due.get(&claimed.lease_key)?.is_none() {
                    results.push(Err(format!(
                        "stale claim of delivery {}: another attempt owns it",
                        updated.id
                    )));
                    continue;
                }
                due.remove(&claimed.lease_key)?;
                records.insert(updated.id.as_bytes(), encode(*updated))?;
                log.insert(attempt_key(&updated.id, attempt.attempt), encode(*attempt))?;
                if updated.state != DeliveryState::Pending {
                    left_pending += i64::from(pending.remove(pending_key(updated))?.is_some());
                    done.insert(finished_key(updated), &[])?;
                }
                if let (DeliveryState::Pending, Some(at)) = (updated.state, updated.next_attempt_at_ms) {
                    due.insert(due_entry(&updated.destination, at, &updated.id), &[])?;
                }
                results.push(Ok(()));
            }
            add_pending(meta, -left_pending)?;
            Ok::<_, sled::transaction::ConflictableTransactionError<StoreError>>((results, left_pending))
        });
        match committed {
            Ok((results, left_pending)) => {
                self.pending.fetch_sub(left_pending, Ordering::Relaxed);
                results.into_iter().map(|r| r.map_err(StoreError::Conflict)).collect()
            }
            // The closure never aborts: what fails is sled itself, and every outcome shares it.
            Err(sled::transaction::TransactionError::Storage(e)) => {
                outcomes.iter().map(|_| Err(StoreError::Sled(e.clone()))).collect()
            }
            Err(sled::transaction::TransactionError::Abort(e)) => {
                let text = e.to_string();
                outcomes.iter().map(|_| Err(StoreError::Conflict(text.clone()))).collect()
            }
        }
    }

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

    /// Sends a failed or misconfigured delivery again now, with a new retry schedule; it keeps
    /// its id and event id (receivers de-duplicate on them). Durable before it returns.
    pub async fn redeliver(&self, id: &Uuid, now_ms: u64) -> Result<Delivery> {
        let restarted = self.restart_unflushed(id, now_ms)?;
        self.flush().await?;
        self.signal.post(&restarted.destination, now_ms);
        Ok(restarted)
    }

    /// The redelivery transaction, without waiting for the disk.
    fn restart_unflushed(&self, id: &Uuid, now_ms: u64) -> Result<Delivery> {
        let trees = (&self.deliveries, &self.due, &self.pending_index, &self.finished_index, &self.meta);
        let restarted = trees.transaction(|(records, due, pending, done, meta)| {
            let Some(bytes) = records.get(id.as_bytes())? else {
                return Err(sled::transaction::ConflictableTransactionError::Abort(StoreError::NotFound(
                    format!("delivery {id}"),
                )));
            };
            let mut d: Delivery = decode(id.as_bytes(), &bytes)
                .map_err(sled::transaction::ConflictableTransactionError::Abort)?;
            if !matches!(d.state, DeliveryState::Failed | DeliveryState::Misconfigured) {
                return Err(sled::transaction::ConflictableTransactionError::Abort(StoreError::Conflict(
                    format!(
                        "delivery {id} is {}; only failed or misconfigured deliveries can be redelivered",
                        d.state.as_str()
                    ),
                )));
            }
            done.remove(finished_key(&d))?;
            d.restart(now_ms);
            records.insert(id.as_bytes(), encode(&d))?;
            due.insert(due_entry(&d.destination, now_ms, id), &[])?;
            pending.insert(pending_key(&d), &[])?;
            add_pending(meta, 1)?;
            Ok(d)
        })?;
        self.pending.fetch_add(1, Ordering::Relaxed);
        Ok(restarted)
    }

    /// Redelivers every failed delivery of a subscription created at or after `since_ms`; returns
    /// their ids. One flush for all of them, and only ids are kept in memory.
    pub async fn recover_subscription(
        &self,
        subscription_id: &str,
        since_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<Uuid>> {
        let prefix = subscription_prefix(subscription_id);
        let mut start = prefix.clone();
        start.extend_from_slice(&since_ms.to_be_bytes());
        let end = prefix_end(&prefix);
        let mut ids = Vec::new();
        let range = match &end {
            Some(end) => self.delivery_index.range(start.as_slice()..end.as_slice()),
            None => self.delivery_index.range(start.as_slice()..),
        };
        for item in range {
            let (key, _) = item?;
            let Some(raw) = key.get(key.len().saturating_sub(16)..) else {
                continue;
            };
            let Ok(id) = Uuid::from_slice(raw) else { continue };
            if self.delivery(&id)?.is_some_and(|d| d.state == DeliveryState::Failed) {
                ids.push(id);
            }
        }
        let mut recovered = Vec::with_capacity(ids.len());
        let mut destinations = std::collections::HashSet::new();
        for id in ids {
            match self.restart_unflushed(&id, now_ms) {
                Ok(d) => {
                    recovered.push(d.id);
                    destinations.insert(d.destination);
                }
                // Changed meanwhile (e.g. redelivered by someone else): leave it.
                Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.flush().await?;
        self.signal.post_many(destinations.iter().map(|d| (d.as_str(), now_ms)));
        Ok(recovered)
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

fn next_key(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}
