//! The delivery side's handle on the delivery log: reports go to one recorder task, which
//! appends them in batches to the delivery log stream, off the path of every send.
//!
//! The recorder takes every report waiting at that moment (at most [`LOG_BATCH`]), appends
//! them as one record to the stream with a publisher confirm, through the channel of the
//! ingestion's current connection ([`Outlet`]), and answers each report once the record is
//! in the stream: the broker has confirmed it *and* this replica has read it back
//! ([`Receipts`]). Several records may wait at once, so appending never waits for a round
//! trip. The message that carried a delivery is acknowledged after the answer, so a step
//! acknowledged is in the stream, whichever replica later reads it: every replica folds the
//! stream into its own view ([`crate::follower`]).
//!
//! Why read back: RabbitMQ 3.10 confirmed records published to a stream whose writer's node
//! was frozen and then replaced, that never reached the stream (found by the chaos run across
//! replicas, docs/reliability.md). A record read from the stream is committed there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::BasicAckOptions;
use lapin::{Channel, Confirmation};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};
use uuid::Uuid;
use webhookd_core::clock::Clock;
use webhookd_core::delivery::{AttemptRecord, Delivery};
use webhookd_core::delivery_log::{LogEntry, LogRecord};
use webhookd_metrics::Metrics;

use crate::dispatch::Outlet;

/// Reports appended in one record at most.
pub const LOG_BATCH: usize = 256;

/// Records appended whose confirms are still awaited, at most.
const APPENDS_IN_FLIGHT: usize = 2;

/// Longest wait for the broker to take, confirm and hand back one record.
const APPEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Records the receipt reader takes ahead of its acknowledgement (stream credit).
const RECEIPT_PREFETCH: u16 = 256;

/// One report: an entry, and who waits for it to be in the stream.
struct Report {
    entry: LogEntry,
    recorded: oneshot::Sender<bool>,
}

/// Where the delivery side reports to the delivery log; cheap to clone.
#[derive(Clone)]
pub struct DeliveryLog {
    reports: mpsc::Sender<Report>,
    receipts: Arc<Receipts>,
    stream: String,
}

/// What the recorder appends with.
struct Recorder {
    outlet: Outlet,
    stream: String,
    clock: Clock,
    metrics: Arc<Metrics>,
    receipts: Arc<Receipts>,
}

/// Records appended here and not read back yet, by record id: each waits for a reader of the
/// stream ([`DeliveryLog::read_receipts`]) to see it.
#[derive(Default)]
pub struct Receipts {
    waiting: Mutex<HashMap<Uuid, oneshot::Sender<()>>>,
}

impl Receipts {
    /// Starts waiting for the record `id`; the receiver resolves once it is read back.
    fn expect(&self, id: Uuid) -> oneshot::Receiver<()> {
        let (seen, receipt) = oneshot::channel();
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner).insert(id, seen);
        receipt
    }

    /// The record `id` was read from the stream (records of other replicas are not waited for).
    fn seen(&self, id: &Uuid) {
        let waiter = self.waiting.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
        if let Some(waiter) = waiter {
            let _ = waiter.send(());
        }
    }

    /// Stops waiting for `id` (it was not confirmed, or not read back in time).
    fn forget(&self, id: &Uuid) {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
    }
}

impl DeliveryLog {
    /// The handle and its recorder, which appends to `stream` through `outlet`'s channel and
    /// ends (after appending what it was handed) once every handle is dropped.
    pub fn start(
        outlet: Outlet,
        stream: String,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> (DeliveryLog, tokio::task::JoinHandle<()>) {
        let (reports, received) = mpsc::channel(LOG_BATCH);
        let receipts = Arc::new(Receipts::default());
        let recorder =
            Recorder { outlet, stream: stream.clone(), clock, metrics, receipts: receipts.clone() };
        (DeliveryLog { reports, receipts, stream }, tokio::spawn(recorder.run(received)))
    }

    /// Starts reading the records appended to the stream from now on, on `channel`, to tell
    /// the recorder which of its records are in the stream. Returns once reading has started:
    /// call it on a connection before handing its publishing channel to the [`Outlet`], so
    /// that every record appended through that connection is read. The task ends with the
    /// channel.
    pub async fn read_receipts(&self, channel: Channel) -> lapin::Result<tokio::task::JoinHandle<()>> {
        let mut records =
            webhookd_amqp::stream::read_next(&channel, &self.stream, "webhookd-receipts", RECEIPT_PREFETCH)
                .await?;
        let receipts = self.receipts.clone();
        Ok(tokio::spawn(async move {
            while let Some(Ok(first)) = records.next().await {
                let mut last = first;
                loop {
                    if let Some(id) = last.properties.message_id().as_ref() {
                        if let Ok(id) = Uuid::parse_str(id.as_str()) {
                            receipts.seen(&id);
                        }
                    }
                    // What else has arrived is credited with it, in one acknowledgement.
                    match futures_util::FutureExt::now_or_never(records.next()) {
                        Some(Some(Ok(next))) => last = next,
                        _ => break,
                    }
                }
                if last.ack(BasicAckOptions { multiple: true }).await.is_err() {
                    break;
                }
            }
            debug!("the delivery log receipt reader ended with its channel");
        }))
    }

    /// Reports `delivery` as it stands after `attempt` (or after a hand-over without one);
    /// true once the broker has confirmed it in the stream, false when it could not be
    /// appended (the caller's message must not be acknowledged).
    pub async fn report(&self, delivery: Delivery, attempt: Option<AttemptRecord>) -> bool {
        let (recorded, done) = oneshot::channel();
        let entry = LogEntry::new(delivery, attempt);
        if self.reports.send(Report { entry, recorded }).await.is_err() {
            warn!("the delivery log recorder has stopped; a report is not recorded");
            return false;
        }
        done.await.unwrap_or(false)
    }
}

impl Recorder {
    async fn run(self, mut received: mpsc::Receiver<Report>) {
        let appends = Arc::new(Semaphore::new(APPENDS_IN_FLIGHT));
        let confirms = TaskTracker::new();
        let mut batch = Vec::with_capacity(LOG_BATCH);
        while received.recv_many(&mut batch, LOG_BATCH).await > 0 {
            // Never closed, so this always gives a permit.
            let Ok(permit) = appends.clone().acquire_owned().await else { break };
            let (entries, waiters): (Vec<_>, Vec<_>) = batch.drain(..).map(|r| (r.entry, r.recorded)).unzip();
            let record = LogRecord::new(self.clock.now_ms(), entries);
            let Some(channel) = self.outlet.current() else {
                warn!(
                    reports = waiters.len(),
                    "not connected to the broker: delivery log reports are not recorded"
                );
                answer(waiters, false);
                continue;
            };
            // Published here, in order; the confirm and the read-back are awaited beside the
            // next appends.
            let id = Uuid::new_v4();
            let receipt = self.receipts.expect(id);
            let deadline = Instant::now() + APPEND_TIMEOUT;
            let published = tokio::time::timeout_at(
                deadline,
                webhookd_amqp::stream::publish_with_id(
                    &channel,
                    &self.stream,
                    &record.encode(),
                    Some(&id.to_string()),
                ),
            )
            .await;
            let confirm = match published {
                Ok(Ok(confirm)) => confirm,
                Ok(Err(e)) => {
                    warn!(error = %e, reports = waiters.len(), "cannot append to the delivery log stream");
                    self.receipts.forget(&id);
                    answer(waiters, false);
                    continue;
                }
                Err(_) => {
                    warn!(reports = waiters.len(), "the broker did not take a delivery log record in time");
                    self.receipts.forget(&id);
                    answer(waiters, false);
                    continue;
                }
            };
            let (metrics, stream, receipts) =
                (self.metrics.clone(), self.stream.clone(), self.receipts.clone());
            confirms.spawn(async move {
                let confirmed = match tokio::time::timeout_at(deadline, confirm).await {
                    Ok(Ok(Confirmation::Ack(None))) => true,
                    Ok(Ok(Confirmation::Ack(Some(_)))) => {
                        warn!(stream = %stream, "the delivery log stream does not exist: a record came back");
                        false
                    }
                    Ok(Ok(_)) => {
                        warn!("the broker refused a delivery log record (nack)");
                        false
                    }
                    Ok(Err(e)) => {
                        warn!(error = %e, "a delivery log record was not confirmed");
                        false
                    }
                    Err(_) => {
                        warn!("the broker did not confirm a delivery log record in time");
                        false
                    }
                };
                // The next record may be appended while this one is read back.
                drop(permit);
                let recorded = confirmed
                    && match tokio::time::timeout_at(deadline, receipt).await {
                        Ok(Ok(())) => true,
                        _ => {
                            metrics.delivery_log_records_unseen.inc();
                            warn!(
                                record_id = %id,
                                reports = waiters.len(),
                                "the broker confirmed a delivery log record that was not read back from the stream in time; its messages are not acknowledged and their attempts are repeated"
                            );
                            false
                        }
                    };
                receipts.forget(&id);
                if recorded {
                    metrics.delivery_log_appends.inc();
                }
                answer(waiters, recorded);
            });
        }
        confirms.close();
        confirms.wait().await;
    }
}

fn answer(waiters: Vec<oneshot::Sender<bool>>, recorded: bool) {
    for waiter in waiters {
        let _ = waiter.send(recorded);
    }
}
