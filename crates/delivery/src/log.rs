//! The delivery side's handle on the delivery log: reports go to one recorder task, off the
//! path of every send.
//!
//! The recorder folds all reports waiting at that moment into the store's view in one
//! transaction ([`Store::record_log`]), and notes each attempt's success or failure for its
//! subscription's health (auto-disable). Nothing waits for it but back-pressure: a send hands
//! its report over and goes on; only when the recorder is a whole batch behind does a hand-over
//! wait.

use tokio::sync::mpsc;
use tracing::warn;
use webhookd_core::delivery::{AttemptRecord, Delivery, DeliveryState};
use webhookd_store::Store;

/// Reports recorded in one transaction at most, and waiting at most.
pub const LOG_BATCH: usize = 256;

/// One report: a delivery as it stands, and the attempt that brought it there, if any.
struct Report {
    delivery: Delivery,
    attempt: Option<AttemptRecord>,
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

    /// Reports `delivery` as it stands after `attempt` (or after a hand-over without one).
    pub async fn report(&self, delivery: Delivery, attempt: Option<AttemptRecord>) {
        if self.reports.send(Report { delivery, attempt }).await.is_err() {
            warn!("the delivery log recorder has stopped; a report is lost (the delivery is not)");
        }
    }
}

async fn record(store: Store, mut received: mpsc::Receiver<Report>) {
    let mut batch = Vec::with_capacity(LOG_BATCH);
    while received.recv_many(&mut batch, LOG_BATCH).await > 0 {
        let reports: Vec<_> = batch.iter().map(|r| (&r.delivery, r.attempt.as_ref())).collect();
        if let Err(e) = store.record_log(&reports) {
            store.note_error(&e);
            warn!(error = %e, reports = reports.len(), "cannot record delivery log reports; they are lost (the deliveries are not)");
        }
        drop(reports);
        for report in batch.drain(..) {
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
