//! The delivery side's handle on the delivery log: reports go to one recorder task, off the
//! path of every send.
//!
//! The recorder folds all reports waiting at that moment into the store's view in one
//! transaction ([`Store::record_log`]), makes them durable with one shared flush (group
//! commit), then answers each report, and notes each attempt's success or failure for its
//! subscription's health (auto-disable). No send waits for it: the slot is free before the
//! report is made. The message that carried the delivery is acknowledged after the answer, so
//! a final state acknowledged is in the log even after a crash.

use tokio::sync::{mpsc, oneshot};
use tracing::warn;
use webhookd_core::delivery::{AttemptRecord, Delivery, DeliveryState};
use webhookd_store::Store;

/// Reports recorded in one transaction at most, and waiting at most.
pub const LOG_BATCH: usize = 256;

/// One report: a delivery as it stands, and the attempt that brought it there, if any.
struct Report {
    delivery: Delivery,
    attempt: Option<AttemptRecord>,
    recorded: oneshot::Sender<()>,
}

/// Where the delivery side reports to the delivery log; cheap to clone.
#[derive(Clone)]
pub struct DeliveryLog {
    reports: mpsc::Sender<Report>,
}

impl DeliveryLog {
    /// The handle and its recorder, which ends (after recording what it was handed) once every
    /// handle is dropped.
    pub fn start(store: Store) -> (DeliveryLog, tokio::task::JoinHandle<()>) {
        let (reports, received) = mpsc::channel(LOG_BATCH);
        (DeliveryLog { reports }, tokio::spawn(record(store, received)))
    }

    /// Reports `delivery` as it stands after `attempt` (or after a hand-over without one);
    /// true once the report is on disk, false when it could not be recorded.
    pub async fn report(&self, delivery: Delivery, attempt: Option<AttemptRecord>) -> bool {
        let (recorded, done) = oneshot::channel();
        if self.reports.send(Report { delivery, attempt, recorded }).await.is_err() {
            warn!("the delivery log recorder has stopped; a report is lost (the delivery is not)");
            return false;
        }
        done.await.is_ok()
    }
}

async fn record(store: Store, mut received: mpsc::Receiver<Report>) {
    let mut batch = Vec::with_capacity(LOG_BATCH);
    while received.recv_many(&mut batch, LOG_BATCH).await > 0 {
        let reports: Vec<_> = batch.iter().map(|r| (&r.delivery, r.attempt.as_ref())).collect();
        let written = match store.record_log(&reports) {
            Ok(()) => store.flush().await,
            Err(e) => Err(e),
        };
        drop(reports);
        if let Err(e) = &written {
            store.note_error(e);
            warn!(error = %e, reports = batch.len(), "cannot record delivery log reports; their messages are not acknowledged");
        }
        for report in batch.drain(..) {
            if written.is_ok() {
                let _ = report.recorded.send(());
            }
            let Some(attempt) = report.attempt else { continue };
            let d = &report.delivery;
            let succeeded = d.state == DeliveryState::Delivered;
            if let Err(e) = store.note_attempt(&d.subscription_id, succeeded, attempt.at_ms) {
                store.note_error(&e);
                warn!(subscription_id = %d.subscription_id, error = %e, "cannot record the subscription's health");
            }
        }
    }
}
