//! The delivery side's handle on the delivery log: reports go to one recorder task, which
//! appends them in batches to the delivery log stream, off the path of every send.
//!
//! The recorder takes every report waiting at that moment (at most [`LOG_BATCH`]), appends
//! them as one record to the stream with a publisher confirm, through the channel of the
//! ingestion's current connection ([`Outlet`]), and answers each report once the broker has
//! confirmed the record. Several records may wait for their confirms at once, so appending
//! never waits for a round trip. The message that carried a delivery is acknowledged after the
//! answer, so a step acknowledged is in the stream, whichever replica later reads it: every
//! replica folds the stream into its own view ([`crate::follower`]).

use std::sync::Arc;
use std::time::Duration;

use lapin::Confirmation;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::warn;
use webhookd_core::clock::Clock;
use webhookd_core::delivery::{AttemptRecord, Delivery};
use webhookd_core::delivery_log::{LogEntry, LogRecord};
use webhookd_metrics::Metrics;

use crate::dispatch::Outlet;

/// Reports appended in one record at most.
pub const LOG_BATCH: usize = 256;

/// Records appended whose confirms are still awaited, at most.
const APPENDS_IN_FLIGHT: usize = 2;

/// Longest wait for the broker to take and confirm one record.
const APPEND_TIMEOUT: Duration = Duration::from_secs(30);

/// One report: an entry, and who waits for it to be in the stream.
struct Report {
    entry: LogEntry,
    recorded: oneshot::Sender<bool>,
}

/// Where the delivery side reports to the delivery log; cheap to clone.
#[derive(Clone)]
pub struct DeliveryLog {
    reports: mpsc::Sender<Report>,
}

/// What the recorder appends with.
struct Recorder {
    outlet: Outlet,
    stream: String,
    clock: Clock,
    metrics: Arc<Metrics>,
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
        let recorder = Recorder { outlet, stream, clock, metrics };
        (DeliveryLog { reports }, tokio::spawn(recorder.run(received)))
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
            // Published here, in order; the confirm is awaited beside the next appends.
            let published = tokio::time::timeout(
                APPEND_TIMEOUT,
                webhookd_amqp::stream::publish(&channel, &self.stream, &record.encode()),
            )
            .await;
            let confirm = match published {
                Ok(Ok(confirm)) => confirm,
                Ok(Err(e)) => {
                    warn!(error = %e, reports = waiters.len(), "cannot append to the delivery log stream");
                    answer(waiters, false);
                    continue;
                }
                Err(_) => {
                    warn!(reports = waiters.len(), "the broker did not take a delivery log record in time");
                    answer(waiters, false);
                    continue;
                }
            };
            let (metrics, stream) = (self.metrics.clone(), self.stream.clone());
            confirms.spawn(async move {
                let confirmed = match tokio::time::timeout(APPEND_TIMEOUT, confirm).await {
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
                if confirmed {
                    metrics.delivery_log_appends.inc();
                }
                answer(waiters, confirmed);
                drop(permit);
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
