//! The delivery log as a view: the delivery log stream's entries (a delivery as it stands after
//! an attempt or a hand-over, and the attempt itself), folded into the trees the admin API and
//! the CLI read, with the offset of the last record folded.
//!
//! Nothing waits for these writes: they are not flushed and no send depends on them. What must
//! survive a replica is held by the broker (a pending delivery in its retry queues, the log in
//! its stream); the view is rebuilt from the stream. Entries may repeat (a redelivered event
//! attempts again with the same ids; a record appended twice) or arrive late: an entry of fewer
//! attempts than the view already holds does not move the delivery back, and an attempt is kept
//! by its number, so a repeat replaces itself.

use std::sync::atomic::Ordering;

use sled::Transactional;
use webhookd_core::delivery::DeliveryState;
use webhookd_core::delivery_log::LogEntry;

use uuid::Uuid;

use crate::deliveries::{count_event_deliveries, EventEntry};
use crate::deliveries::{pending_key, ViewRecord};
use crate::keys::{prefix_end, subscription_entry, subscription_prefix};
use crate::{add_pending, Result, Store, StoreError};

/// Where in `meta` the position of the last delivery log record folded is kept.
const LOG_POSITION: &[u8] = b"delivery_log_position";

/// The last delivery log record folded: where it is in the stream, and what tells it apart
/// (so a stream deleted and created again is noticed where this replica resumes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogPosition {
    /// Its stream offset.
    pub offset: u64,
    /// When it was appended, unix milliseconds.
    pub at_ms: u64,
    /// The id of its first entry's delivery (nil for a record without entries).
    pub mark: Uuid,
}

impl LogPosition {
    fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(32);
        bytes.extend_from_slice(&self.offset.to_be_bytes());
        bytes.extend_from_slice(&self.at_ms.to_be_bytes());
        bytes.extend_from_slice(self.mark.as_bytes());
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<LogPosition> {
        let corrupt = || StoreError::Corrupt {
            key: String::from_utf8_lossy(LOG_POSITION).into_owned(),
            reason: format!("{} bytes, not 32", bytes.len()),
        };
        let offset =
            bytes.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).ok_or_else(corrupt)?;
        let at_ms =
            bytes.get(8..16).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).ok_or_else(corrupt)?;
        let mark = bytes.get(16..32).and_then(|b| Uuid::from_slice(b).ok()).ok_or_else(corrupt)?;
        Ok(LogPosition { offset, at_ms, mark })
    }
}

impl Store {
    /// Folds the entries of the delivery log record at `position` into the view, and notes the
    /// position, in one transaction.
    pub fn apply_log(&self, entries: &[LogEntry], position: LogPosition) -> Result<()> {
        self.fold(entries, Some(position))
    }

    /// Folds entries made here into the view at once (a redelivery, read back by its caller);
    /// the same entries come again from the stream.
    pub fn record_log(&self, entries: &[LogEntry]) -> Result<()> {
        self.fold(entries, None)
    }

    /// The last delivery log record folded here, if any.
    pub fn log_position(&self) -> Result<Option<LogPosition>> {
        self.meta.get(LOG_POSITION)?.as_deref().map(LogPosition::decode).transpose()
    }

    fn fold(&self, entries: &[LogEntry], position: Option<LogPosition>) -> Result<()> {
        let trees = (&self.deliveries, &self.delivery_index, &self.pending_index, &self.meta);
        let pending_delta = trees.transaction(|(records, index, pending, meta)| {
            let mut delta = 0i64;
            // One index entry per event, counted once per fold (at k = 10, one write where
            // there were ten).
            let mut events = std::collections::HashMap::new();
            for LogEntry { delivery: d, attempt } in entries {
                let known = match records.get(d.id.as_bytes())? {
                    Some(bytes) => Some(
                        ViewRecord::decode(&d.id, &bytes)
                            .map_err(sled::transaction::ConflictableTransactionError::Abort)?,
                    ),
                    None => None,
                };
                let first = known.is_none();
                let mut record =
                    known.unwrap_or_else(|| ViewRecord { delivery: d.clone(), attempts: Vec::new() });
                let attempt_noted = attempt.as_ref().is_some_and(|a| record.note_attempt(a));
                if !first {
                    let before = &record.delivery;
                    // A late or repeated entry: the view already holds a later state (its
                    // attempt, if new, is still kept).
                    if before.supersedes(d) {
                        if attempt_noted {
                            records.insert(d.id.as_bytes(), record.encode())?;
                        }
                        continue;
                    }
                    if before.state == DeliveryState::Pending {
                        delta -= i64::from(pending.remove(pending_key(before))?.is_some());
                    }
                } else {
                    events.entry(d.event_id).or_insert((EventEntry::of(&d.id), 0)).1 += 1;
                    index.insert(subscription_entry(&d.subscription_id, d.created_at_ms, &d.id), &[])?;
                }
                if d.state == DeliveryState::Pending {
                    delta += i64::from(pending.insert(pending_key(d), &[])?.is_none());
                }
                if !first {
                    record.delivery = d.clone();
                }
                records.insert(d.id.as_bytes(), record.encode())?;
            }
            count_event_deliveries(index, &events)?;
            add_pending(meta, delta)?;
            if let Some(position) = position {
                meta.insert(LOG_POSITION, position.encode())?;
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
