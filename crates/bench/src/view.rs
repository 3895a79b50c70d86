//! Item 8: what the delivery log view costs each replica. Every replica folds every delivery of
//! the service into its own sled view (`Store::apply_log`), so its CPU and disk per delivery
//! count once per replica. Measured in the bench process on a fresh store: delivered entries as
//! the dispatch side logs them (no body, one attempt answered "ack"), with random-looking ids
//! as real delivery ids are, in records of [`ENTRIES_PER_RECORD`].
//!
//! The disk figure is the steady state an operator sees: `held` deliveries are folded, then
//! [`TURNOVER`] times as many more while retention removes the oldest as new ones arrive
//! (as `delivery.retention` does), and the store's size is divided by the deliveries it holds.
//! sled's log keeps space that a fresh store's size would not show.

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use webhookd_core::delivery::{AttemptRecord, Delivery, DeliveryState};
use webhookd_core::delivery_log::LogEntry;
use webhookd_core::subscription::Api;
use webhookd_store::{LogPosition, Store};

use crate::procfs;

/// Entries per folded record (what the recorder's batches hold at a few thousand per second).
pub const ENTRIES_PER_RECORD: usize = 16;

/// How many times the deliveries held are folded again while retention removes as many.
pub const TURNOVER: u64 = 2;

/// Deliveries folded between two retention passes.
const RETENTION_EVERY: u64 = 1_024;

/// What item 8 measured.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct ViewCost {
    /// Deliveries folded.
    pub deliveries: u64,
    /// Deliveries held at the end (retention removed the rest).
    pub held: u64,
    /// CPU per delivery folded (this process, all threads), microseconds.
    pub cpu_us_per_delivery: f64,
    /// Deliveries folded per second, one folder.
    pub deliveries_per_s: f64,
    /// The store's size on disk at the end, after a flush, per delivery held, bytes.
    pub bytes_per_delivery: f64,
    /// One entry's encoded size in the delivery log stream (JSON), bytes.
    pub entry_bytes: u64,
}

/// One delivered entry, number `i`.
fn delivered(i: u64) -> LogEntry {
    let at = 1_765_000_000_000 + i;
    let event_id = Uuid::new_v5(&Uuid::NAMESPACE_DNS, &i.to_be_bytes());
    let subscription_id = format!("wsb_{:032x}", i % 10);
    let trigger = "payment_order.finalized";
    let delivery = Delivery {
        // As the service makes them: ids follow the events' time.
        id: webhookd_core::ids::delivery_id(event_id, at as i64, &subscription_id, trigger),
        event_id,
        api: Api::Rabo,
        subscription_id,
        trigger: trigger.into(),
        method: "POST".into(),
        url: "https://merchant.example.com/webhooks/smartpay".into(),
        http2: false,
        headers: Vec::new(),
        body: String::new(),
        destination: "merchant.example.com:443".into(),
        occurred_at_ms: at as i64,
        created_at_ms: at,
        state: DeliveryState::Delivered,
        attempts: 1,
        next_attempt_at_ms: None,
        last_status: Some(200),
        last_error: None,
        finished_at_ms: Some(finished_at(i)),
        schedule_offset: 0,
        schedule: Some(Default::default()),
    };
    let attempt = AttemptRecord {
        attempt: 1,
        at_ms: at + 2,
        duration_ms: 9,
        status: Some(200),
        response_excerpt: "ack".into(),
        error: None,
        outcome: DeliveryState::Delivered,
    };
    LogEntry::new(delivery, Some(attempt))
}

/// Folds `held` entries into a fresh store under `dir`, then [`TURNOVER`] × `held` more while
/// retention keeps `held`, then flushes; measures (CPU and time include retention).
pub async fn measure(dir: &Path, held: u64) -> anyhow::Result<ViewCost> {
    let store = Store::open(dir)?;
    let deliveries = held * (1 + TURNOVER);
    let entry_bytes = serde_json::to_vec(&delivered(0)).map_or(0, |v| v.len()) as u64;
    let pid = std::process::id();
    let (cpu, started) = (procfs::cpu_time(pid), Instant::now());
    let folder = store.clone();
    tokio::task::spawn_blocking(move || {
        let mut record = Vec::with_capacity(ENTRIES_PER_RECORD);
        for i in 0..deliveries {
            record.push(delivered(i));
            if record.len() == ENTRIES_PER_RECORD || i + 1 == deliveries {
                let position = LogPosition { offset: i, at_ms: 0, mark: record[0].delivery.id };
                folder.apply_log(&record, position)?;
                record.clear();
            }
            if (i + 1) % RETENTION_EVERY == 0 && i + 1 > held {
                // Everything that ended before delivery `i + 1 - held` ended.
                let cutoff = finished_at(i + 1 - held);
                while folder.prune_finished(cutoff, 1_000)? > 0 {}
            }
        }
        anyhow::Ok(())
    })
    .await??;
    store.flush().await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_us_per_delivery = procfs::micros_per(cpu, procfs::cpu_time(pid), deliveries);
    let bytes = store.size_on_disk()?;
    let held_now = store.deliveries_held();
    Ok(ViewCost {
        deliveries,
        held: held_now as u64,
        cpu_us_per_delivery,
        deliveries_per_s: deliveries as f64 / seconds,
        bytes_per_delivery: bytes as f64 / held_now.max(1) as f64,
        entry_bytes,
    })
}

/// When delivery `i` of [`delivered`] ended, unix milliseconds.
fn finished_at(i: u64) -> u64 {
    1_765_000_000_000 + i + 12
}
