//! The delivery log's record format: what every replica appends to the delivery log stream and
//! folds into its own view, so every replica tells the same about every delivery.
//!
//! One record carries a batch of entries (one per step of a delivery: an attempt, a hand-over,
//! a redelivery). An entry keeps a delivery's body and headers only while a redelivery may
//! need them (failed or misconfigured): a delivered or pending delivery is logged without them,
//! which keeps the log small (a pending one is held whole by the broker).

use serde::{Deserialize, Serialize};

use crate::delivery::{AttemptRecord, Delivery, DeliveryState};

/// The version of the record format this webhookd writes and reads.
pub const LOG_RECORD_VERSION: u32 = 1;

/// One step of a delivery: where it stands after it, and the attempt that brought it there,
/// if one did (a deferral, a hop or a redelivery makes none).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The delivery as it stands (see [`LogEntry::new`] for what is left out).
    pub delivery: Delivery,
    /// The attempt, if any.
    pub attempt: Option<AttemptRecord>,
}

impl LogEntry {
    /// The entry for `delivery` after `attempt`; the body and headers are left out unless the
    /// delivery is failed or misconfigured (what a redelivery sends again).
    pub fn new(mut delivery: Delivery, attempt: Option<AttemptRecord>) -> LogEntry {
        if !matches!(delivery.state, DeliveryState::Failed | DeliveryState::Misconfigured) {
            delivery.body = String::new();
            delivery.headers = Vec::new();
        }
        LogEntry { delivery, attempt }
    }
}

/// One record of the delivery log stream: entries appended together, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// The record format's version ([`LOG_RECORD_VERSION`]).
    pub v: u32,
    /// When it was appended, unix milliseconds (for the followers' lag).
    pub at_ms: u64,
    /// The entries, in the order they were made.
    pub entries: Vec<LogEntry>,
}

impl LogRecord {
    /// A record of `entries` appended at `at_ms`.
    pub fn new(at_ms: u64, entries: Vec<LogEntry>) -> LogRecord {
        LogRecord { v: LOG_RECORD_VERSION, at_ms, entries }
    }

    /// What tells this record apart from another at the same offset (a stream created again):
    /// its first entry's delivery id, or nil.
    pub fn mark(&self) -> uuid::Uuid {
        self.entries.first().map_or(uuid::Uuid::nil(), |e| e.delivery.id)
    }

    /// The record's body in the stream.
    pub fn encode(&self) -> Vec<u8> {
        // Entries are plain strings and numbers: serialising them cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a record; the error says why it cannot be read (the follower stops there).
    pub fn decode(bytes: &[u8]) -> Result<LogRecord, String> {
        let record: LogRecord =
            serde_json::from_slice(bytes).map_err(|e| format!("not a webhookd delivery log record: {e}"))?;
        if record.v != LOG_RECORD_VERSION {
            return Err(format!(
                "delivery log record version {} is not {LOG_RECORD_VERSION}, the one this webhookd reads",
                record.v
            ));
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::tests::pending;

    #[test]
    fn an_entry_keeps_the_body_only_where_a_redelivery_needs_it() {
        let attempt = None;
        let pending_entry = LogEntry::new(pending(), attempt.clone());
        assert!(pending_entry.delivery.body.is_empty() && pending_entry.delivery.headers.is_empty());
        for state in [DeliveryState::Failed, DeliveryState::Misconfigured] {
            let ended = Delivery { state, next_attempt_at_ms: None, ..pending() };
            assert_eq!(LogEntry::new(ended.clone(), attempt.clone()).delivery, ended, "{state:?}");
        }
        let delivered = Delivery { state: DeliveryState::Delivered, ..pending() };
        assert!(LogEntry::new(delivered, attempt).delivery.body.is_empty());
    }

    #[test]
    fn a_record_reads_back_and_an_unreadable_one_says_why() {
        let failed = Delivery { state: DeliveryState::Failed, ..pending() };
        let record = LogRecord::new(9, vec![LogEntry::new(pending(), None), LogEntry::new(failed, None)]);
        assert_eq!(LogRecord::decode(&record.encode()), Ok(record));
        assert!(LogRecord::decode(b"{").unwrap_err().contains("not a webhookd delivery log record"));
        let future = br#"{"v":2,"at_ms":1,"entries":[]}"#;
        assert!(LogRecord::decode(future).unwrap_err().contains("version 2"));
    }
}
