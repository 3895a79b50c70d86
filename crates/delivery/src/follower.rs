//! The delivery log follower: reads the delivery log stream in order and folds every record into
//! this replica's view, so every replica answers the same about every delivery, including those
//! another (maybe gone) replica attempted.
//!
//! The view keeps the offset of the last record folded, in the same transaction; reading
//! resumes after it. A replica with an empty data dir reads the stream from its first retained
//! record. Folding is idempotent (see the store's `delivery_log` module), so a record read twice
//! changes nothing. Each attempt is also noted for its subscription's health (auto-disable),
//! so every replica sees the failures of the whole service.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use lapin::options::BasicAckOptions;
use lapin::{Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use webhookd_amqp::sessions::run_sessions;
use webhookd_amqp::stream;
use webhookd_amqp::topology::{Queue, Topology};
use webhookd_amqp::{within, Link, StepError};
use webhookd_core::clock::Clock;
use webhookd_core::delivery::DeliveryState;
use webhookd_core::delivery_log::{LogEntry, LogRecord};
use webhookd_metrics::Metrics;
use webhookd_store::{LogPosition, Store};

use crate::settings::DeliverySettings;

/// Records read ahead of the one being folded.
const PREFETCH: u16 = 512;

/// Records folded together at most (those that have arrived when one is read).
const FOLD_BATCH: usize = 64;

/// Longest wait for one step of connecting to the broker and setting up, milliseconds.
const BROKER_TIMEOUT_MS: u64 = 30_000;

/// How often the view is flushed while records are folded.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Why the follower stopped or lost the broker.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// A step with the broker failed (the follower connects again).
    #[error(transparent)]
    Broker(#[from] StepError),
    /// The broker ended the consumer (stream deleted, node restarted); it connects again.
    #[error("the broker ended the delivery log consumer")]
    ConsumerEnded,
    /// A record that cannot be read: the follower stops there (never skips one).
    #[error("delivery log record at offset {offset} cannot be read: {reason}")]
    BadRecord {
        /// Where in the stream.
        offset: u64,
        /// Why.
        reason: String,
    },
    /// The stream does not continue where this replica left it (deleted and created again, or
    /// the replica was away longer than the stream keeps records); the follower stops.
    #[error("the delivery log stream does not continue where this replica left it: {0}")]
    Diverged(String),
    /// The store failed; the follower stops.
    #[error(transparent)]
    Store(#[from] webhookd_store::StoreError),
}

impl FollowError {
    /// Whether the follower stops for good on it (an operator must act).
    pub fn is_final(&self) -> bool {
        matches!(self, FollowError::BadRecord { .. } | FollowError::Diverged(_) | FollowError::Store(_))
    }
}

/// Folds the delivery log stream into this replica's view.
pub struct Follower {
    store: Store,
    url: String,
    stream: String,
    /// The stream as declared (with its retention).
    log_stream: Queue,
    clock: Clock,
    metrics: Arc<Metrics>,
    retention: Option<Retention>,
}

/// How the follower keeps the view within retention as it folds.
#[derive(Clone, Copy, Debug)]
struct Retention {
    keep_finished_ms: u64,
    most_per_fold: usize,
}

/// Deliveries past retention removed after a fold at least (a few, cheaply, when few arrive).
const PRUNE_AT_LEAST: usize = 64;

impl Follower {
    /// A follower of `settings.log_stream` on the broker at `amqp_url`, folding into `store`.
    pub fn new(
        store: Store,
        settings: &DeliverySettings,
        amqp_url: String,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> Follower {
        Follower {
            store,
            url: amqp_url,
            stream: settings.log_stream.clone(),
            log_stream: settings.log_stream_queue(),
            clock,
            metrics,
            retention: None,
        }
    }

    /// Removes finished deliveries once they are `keep_finished_ms` old, after each fold: up
    /// to twice as many as were folded (at least a few, at most `most_per_fold`), so the view
    /// stays level under load, in the thread that writes it, in small steps.
    pub fn with_retention(mut self, keep_finished_ms: u64, most_per_fold: usize) -> Follower {
        let most_per_fold = most_per_fold.max(1);
        self.retention = Some(Retention { keep_finished_ms, most_per_fold });
        self
    }

    /// Folds records until `shutdown`, connecting again with backoff whenever the broker goes
    /// away. Stops for good at a record it cannot read and when the store fails: this
    /// replica's view then stays where it is (deliveries go on; the log shown here does not).
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), FollowError> {
        let followed = run_sessions(
            "the delivery log follower",
            &shutdown,
            || self.session(&shutdown),
            FollowError::is_final,
            || self.metrics.delivery_log_follower_up.set(0),
        )
        .await;
        if let Err(e) = &followed {
            if let FollowError::Store(e) = e {
                self.store.note_error(e);
            }
            error!(error = %e, "the delivery log follower stopped; this replica's delivery log is no longer updated until an operator acts (deliveries go on)");
            self.metrics.delivery_log_follower_stopped.set(1);
        }
        followed
    }

    /// One connection's worth of folding: resume after the last record folded.
    async fn session(&self, shutdown: &CancellationToken) -> Result<(), FollowError> {
        let properties = ConnectionProperties::default().with_connection_name("webhookd-delivery-log".into());
        let connection = within(
            None,
            "delivery log connect",
            BROKER_TIMEOUT_MS,
            Connection::connect(&self.url, properties),
        )
        .await?;
        let link = Link::new(connection);
        let last = self.store.log_position()?;
        let log_stream = Topology::default().queue(self.log_stream.clone());
        // Reading starts at the last record folded: finding it again proves the stream is the
        // one this replica folded.
        let mut consumer = link
            .within("delivery log set-up", BROKER_TIMEOUT_MS, async {
                let channel = link.channel().await?;
                log_stream.declare(&channel).await?;
                let from = last.map(|p| p.offset);
                stream::read_from(&channel, &self.stream, from, "webhookd-delivery-log", PREFETCH).await
            })
            .await?;
        info!(stream = %self.stream, after = ?last.map(|p| p.offset), "folding the delivery log");
        self.metrics.delivery_log_follower_up.set(1);
        let mut resume = last;
        let mut folded = last.map(|p| p.offset);
        let mut flushed = Instant::now();
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => {
                    link.close("webhookd stopping").await;
                    return Ok(());
                }
                _ = link.broken.cancelled() => {
                    return Err(StepError::Broken { step: "delivery log read", reason: link.reason() }.into());
                }
                next = consumer.next() => next,
            };
            let mut messages = vec![next.ok_or(FollowError::ConsumerEnded)?.map_err(StepError::from)?];
            // What else has arrived is folded with it: one transaction and one credit for all.
            // An error met here is met again by the next read.
            while messages.len() < FOLD_BATCH {
                match consumer.next().now_or_never() {
                    Some(Some(Ok(message))) => messages.push(message),
                    _ => break,
                }
            }
            let mut records = Vec::with_capacity(messages.len());
            for message in &messages {
                let offset = stream::offset_of(&message.properties).ok_or_else(|| {
                    FollowError::BadRecord { offset: 0, reason: "no x-stream-offset header".into() }
                })?;
                if let Some(p) = resume {
                    if check_resume(&p, offset, &message.data)? {
                        resume = None;
                    }
                } else if folded.is_none_or(|f| offset > f) {
                    let record = LogRecord::decode(&message.data)
                        .map_err(|reason| FollowError::BadRecord { offset, reason })?;
                    records.push((offset, record));
                    folded = Some(offset);
                }
            }
            if !records.is_empty() {
                self.fold(records).await?;
                // Not for durability (a replica reads again what it lost), but so that a disk
                // that cannot be written is noticed within a second, as by every other part.
                if flushed.elapsed() >= FLUSH_EVERY {
                    self.store.flush().await?;
                    flushed = Instant::now();
                }
            }
            // An ack on a stream is credit for more records, not removal.
            if let Some(last) = messages.last() {
                link.within(
                    "delivery log credit",
                    BROKER_TIMEOUT_MS,
                    last.ack(BasicAckOptions { multiple: true }),
                )
                .await?;
            }
        }
    }

    /// Folds records, in stream order, into the view in one transaction (off the async
    /// threads), and notes their attempts for the subscriptions' health.
    async fn fold(&self, records: Vec<(u64, LogRecord)>) -> Result<(), FollowError> {
        let Some((offset, last)) = records.last() else { return Ok(()) };
        let (offset, at_ms) = (*offset, last.at_ms);
        let position = LogPosition { offset, at_ms, mark: last.mark() };
        let entries: Vec<LogEntry> = records.into_iter().flat_map(|(_, r)| r.entries).collect();
        let store = self.store.clone();
        let prune = self.retention.map(|r| {
            let cutoff = self.clock.now_ms().saturating_sub(r.keep_finished_ms);
            let most = entries.len().saturating_mul(2).max(PRUNE_AT_LEAST).min(r.most_per_fold);
            (cutoff, most)
        });
        let folded = tokio::task::spawn_blocking(move || {
            store.apply_log(&entries, position)?;
            store.note_attempts(entries.iter().filter_map(|entry| {
                let (d, attempt) = (&entry.delivery, entry.attempt.as_ref()?);
                Some((d.subscription_id.as_str(), d.state == DeliveryState::Delivered, attempt.at_ms))
            }))?;
            match prune {
                Some((cutoff, most)) => store.prune_finished(cutoff, most),
                None => Ok(0),
            }
        })
        .await;
        let pruned = match folded {
            Ok(result) => result?,
            Err(e) => {
                return Err(FollowError::BadRecord { offset, reason: format!("folding it failed: {e}") })
            }
        };
        self.metrics.deliveries_pruned.inc_by(pruned as u64);
        self.metrics.delivery_log_offset.set(offset as i64);
        let lag_ms = self.clock.now_ms().saturating_sub(at_ms);
        self.metrics.delivery_log_lag.set(lag_ms as f64 / 1000.0);
        Ok(())
    }
}

/// How much later than the last record folded a record before it may have been appended
/// (replicas' clocks differ) before the stream counts as created again.
const CLOCK_TOLERANCE_MS: u64 = 5 * 60 * 1000;

/// Checks one record read while resuming at `last`: true once it is the record this replica
/// folded last (reading goes on after it). A stream read from an offset may start at the
/// beginning of the chunk holding it, so records before it are passed over, unless they were
/// appended well after it (a stream created again, shorter than this replica's position). A
/// record past it, before it was found, means it is not in the stream any more.
fn check_resume(last: &LogPosition, offset: u64, body: &[u8]) -> Result<bool, FollowError> {
    let record = LogRecord::decode(body).ok();
    let diverged = |what: String| {
        Err(FollowError::Diverged(format!(
            "{what}; it was deleted and created again, or this replica was away longer than the stream keeps \
             records: empty this replica's data dir so that it rebuilds its view from the stream"
        )))
    };
    if offset < last.offset {
        return match record {
            Some(r) if r.at_ms > last.at_ms.saturating_add(CLOCK_TOLERANCE_MS) => diverged(format!(
                "offset {offset}, before the last record folded here (offset {}), was appended after it",
                last.offset
            )),
            _ => Ok(false),
        };
    }
    if offset > last.offset {
        return diverged(format!(
            "the record folded here last (offset {}) is not in the stream",
            last.offset
        ));
    }
    match record {
        Some(r) if r.at_ms == last.at_ms && r.mark() == last.mark => Ok(true),
        _ => diverged(format!("the record at offset {offset} is not the one folded here")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use webhookd_core::delivery_log::LogRecord;

    fn body(at_ms: u64) -> Vec<u8> {
        LogRecord::new(at_ms, Vec::new()).encode()
    }

    #[test]
    fn resuming_finds_the_last_record_or_says_the_stream_is_another() {
        let last = LogPosition { offset: 10, at_ms: 1_000_000, mark: uuid::Uuid::nil() };
        // The chunk before it, then the record itself.
        assert!(!check_resume(&last, 7, &body(999_000)).unwrap());
        assert!(check_resume(&last, 10, &body(1_000_000)).unwrap());
        // Another record at that offset, one appended long after it before it, or none at all.
        for (offset, at) in [(10, 1_000_001), (3, 1_000_000 + CLOCK_TOLERANCE_MS + 1), (11, 2_000_000)] {
            let e = check_resume(&last, offset, &body(at)).unwrap_err();
            assert!(matches!(e, FollowError::Diverged(_)) && e.is_final(), "{offset}: {e}");
        }
    }
}
