//! The delivery log as a view: the delivery log stream's entries (a delivery as it stands after
//! an attempt or a hand-over, and the attempt itself), folded into the trees the admin API and
//! the CLI read, with the offset of the last record folded.
//!
//! Nothing waits for these writes: they are not flushed and no send depends on them. What must
//! survive a replica is held by the broker (a pending delivery in its retry queues, the log in
//! its stream); the view is rebuilt from the stream. Entries may repeat (a redelivered event
//! attempts again with the same ids; a record appended twice) or arrive late: an entry of fewer
//! attempts than the view already holds does not move the delivery back, and an attempt record
//! is keyed by its number, so a repeat overwrites itself.

use std::sync::atomic::Ordering;

use sled::Transactional;
use webhookd_core::delivery::{Delivery, DeliveryState};
use webhookd_core::delivery_log::LogEntry;

use uuid::Uuid;

use crate::deliveries::{attempt_key, finished_key, pending_key};
use crate::keys::{event_entry, prefix_end, subscription_entry, subscription_prefix};
use crate::{add_pending, decode, encode, Result, Store, StoreError};

/// Where in `meta` the offset of the last delivery log record folded is kept.
const LOG_OFFSET: &[u8] = b"delivery_log_offset";

impl Store {
    /// Folds the entries of the delivery log record at `offset` into the view, and notes the
    /// offset, in one transaction.
    pub fn apply_log(&self, entries: &[LogEntry], offset: u64) -> Result<()> {
        self.fold(entries, Some(offset))
    }

    /// Folds entries made here into the view at once (a redelivery, read back by its caller);
    /// the same entries come again from the stream.
    pub fn record_log(&self, entries: &[LogEntry]) -> Result<()> {
        self.fold(entries, None)
    }

    /// The offset of the last delivery log record folded here, if any.
    pub fn log_offset(&self) -> Result<Option<u64>> {
        Ok(self.meta.get(LOG_OFFSET)?.as_deref().and_then(|b| Some(u64::from_be_bytes(b.try_into().ok()?))))
    }

    fn fold(&self, entries: &[LogEntry], offset: Option<u64>) -> Result<()> {
        let trees = (
            &self.deliveries,
            &self.attempts,
            &self.delivery_index,
            &self.pending_index,
            &self.finished_index,
            &self.meta,
        );
        let pending_delta = trees.transaction(|(records, log, index, pending, done, meta)| {
            let mut delta = 0i64;
            for LogEntry { delivery: d, attempt } in entries {
                if let Some(attempt) = attempt {
                    log.insert(attempt_key(&d.id, attempt.attempt), encode(attempt))?;
                }
                let before = match records.get(d.id.as_bytes())? {
                    Some(bytes) => Some(
                        decode::<Delivery>(d.id.as_bytes(), &bytes)
                            .map_err(sled::transaction::ConflictableTransactionError::Abort)?,
                    ),
                    None => None,
                };
                if let Some(before) = &before {
                    // A late or repeated entry: the view already holds a later state.
                    if before.supersedes(d) {
                        continue;
                    }
                    if before.state == DeliveryState::Pending {
                        delta -= i64::from(pending.remove(pending_key(before))?.is_some());
                    } else {
                        done.remove(finished_key(before))?;
                    }
                } else {
                    index.insert(event_entry(&d.event_id, &d.id), &[])?;
                    index.insert(subscription_entry(&d.subscription_id, d.created_at_ms, &d.id), &[])?;
                }
                if d.state == DeliveryState::Pending {
                    delta += i64::from(pending.insert(pending_key(d), &[])?.is_none());
                } else {
                    done.insert(finished_key(d), &[])?;
                }
                records.insert(d.id.as_bytes(), encode(d))?;
            }
            add_pending(meta, delta)?;
            if let Some(offset) = offset {
                meta.insert(LOG_OFFSET, &offset.to_be_bytes())?;
            }
            Ok::<_, sled::transaction::ConflictableTransactionError<StoreError>>(delta)
        })?;
        self.pending.fetch_add(pending_delta, Ordering::Relaxed);
        Ok(())
    }

    /// The failed deliveries of a subscription created at or after `since_ms`, oldest first
    /// (ids only, so memory stays small however many there are).
    pub fn failed_since(&self, subscription_id: &str, since_ms: u64) -> Result<Vec<Uuid>> {
        let prefix = subscription_prefix(subscription_id);
        let mut start = prefix.clone();
        start.extend_from_slice(&since_ms.to_be_bytes());
        let range = match prefix_end(&prefix) {
            Some(end) => self.delivery_index.range(start.as_slice()..end.as_slice()),
            None => self.delivery_index.range(start.as_slice()..),
        };
        let mut ids = Vec::new();
        for item in range {
            let (key, _) = item?;
            let Some(raw) = key.get(key.len().saturating_sub(16)..) else { continue };
            let Ok(id) = Uuid::from_slice(raw) else { continue };
            if self.delivery(&id)?.is_some_and(|d| d.state == DeliveryState::Failed) {
                ids.push(id);
            }
        }
        Ok(ids)
    }
}
