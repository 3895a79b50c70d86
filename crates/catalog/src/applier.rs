//! The catalog's one owner: proposers append changes and wait for their own apply; the applier
//! reads the stream in order and applies every record to this replica's store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, ConfirmSelectOptions};
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{error, info, warn};
use uuid::Uuid;
use webhookd_amqp::sessions::run_sessions;
use webhookd_amqp::{within, Link};
use webhookd_core::catalog::{CatalogRecord, Change, SnapshotPart};
use webhookd_core::clock::Clock;
use webhookd_core::subscription::Subscription;
use webhookd_metrics::Metrics;
use webhookd_store::{Applied, CatalogPosition, Store, StoreError};

use crate::settings::CatalogSettings;
use crate::stream;
use crate::CatalogError;

/// What a change did, as every replica computed it: the subscription as it was before, or why
/// the catalog's state refused the change.
pub type Outcome = Result<Option<Subscription>, StoreError>;

/// Longest wait for one step of connecting to the broker and setting up, milliseconds.
const BROKER_TIMEOUT_MS: u64 = 30_000;

/// The catalog: cheap to clone; reads go to this replica's store, changes through the log.
#[derive(Clone)]
pub struct Catalog {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    settings: CatalogSettings,
    url: String,
    clock: Clock,
    metrics: Arc<Metrics>,
    /// Proposers waiting for their change to be applied here, by change id.
    waiters: Mutex<HashMap<Uuid, oneshot::Sender<Outcome>>>,
    /// The connection and confirm-mode channel appends go through; never held across an await.
    appender: Mutex<Option<Arc<Appender>>>,
    /// Held while an appender connection is being made, so only one is.
    opening: tokio::sync::Mutex<()>,
    /// The offset of the last record applied here.
    applied: watch::Sender<Option<u64>>,
    /// True once this replica has applied a barrier it appended after its applier started
    /// reading: it has everything appended before, so events may be matched.
    caught_up: watch::Sender<bool>,
    /// Why the applier stopped, once it has.
    stopped: watch::Sender<Option<String>>,
    /// Set while this replica appends a snapshot.
    snapshotting: Arc<std::sync::atomic::AtomicBool>,
}

/// One appender connection.
struct Appender {
    link: Link,
    channel: Channel,
}

/// Removes a proposer's waiter when its wait ends, whichever way.
struct Waiting<'a> {
    waiters: &'a Mutex<HashMap<Uuid, oneshot::Sender<Outcome>>>,
    change_id: Uuid,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.change_id);
    }
}

/// Drops an appender connection unless the append through it succeeded: after a nack, an
/// error, or a wait cut short by the proposer's deadline, the next append makes a new one.
struct Discard<'a> {
    inner: &'a Inner,
    appender: Option<Arc<Appender>>,
}

impl Drop for Discard<'_> {
    fn drop(&mut self) {
        if let Some(used) = self.appender.take() {
            let mut current = self.inner.appender.lock().unwrap_or_else(|e| e.into_inner());
            if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &used)) {
                *current = None;
            }
        }
    }
}

impl Catalog {
    /// A catalog over `store`, with its log in the stream `settings.stream` of the broker at
    /// `amqp_url`; nothing is applied until [`Catalog::run`] runs.
    pub fn new(
        store: Store,
        settings: CatalogSettings,
        amqp_url: String,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> Catalog {
        Catalog {
            inner: Arc::new(Inner {
                store,
                settings,
                url: amqp_url,
                clock,
                metrics,
                waiters: Mutex::default(),
                appender: Mutex::default(),
                opening: tokio::sync::Mutex::default(),
                applied: watch::Sender::new(None),
                caught_up: watch::Sender::new(false),
                stopped: watch::Sender::new(None),
                snapshotting: Arc::default(),
            }),
        }
    }

    /// The store this replica applies to (for reads).
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The offset of the last record applied here, if any.
    pub fn applied_offset(&self) -> Option<u64> {
        *self.inner.applied.borrow()
    }

    /// Why the applier stopped, if it has.
    pub fn stopped(&self) -> Option<String> {
        self.inner.stopped.borrow().clone()
    }

    /// Whether this replica has caught up with the log since its applier (re)started reading
    /// it: events may be matched only then.
    pub fn is_caught_up(&self) -> bool {
        *self.inner.caught_up.borrow()
    }

    /// Follows [`Catalog::is_caught_up`] (the ingestion waits on it before matching a batch).
    pub fn caught_up(&self) -> watch::Receiver<bool> {
        self.inner.caught_up.subscribe()
    }

    /// The life of the log this replica applies (nil before it has applied a record).
    fn epoch(&self) -> Uuid {
        self.inner.store.catalog_position().ok().flatten().map_or(Uuid::nil(), |p| p.epoch)
    }

    /// Waits until this replica has applied everything appended to the log before now (appends a
    /// barrier and waits for its apply), at most `catalog.write_timeout_ms`.
    pub async fn sync(&self) -> Result<(), CatalogError> {
        self.submit(Change::Barrier).await.map(|_| ())
    }

    /// Appends `change` to the log and waits until this replica has applied it, at most
    /// `catalog.write_timeout_ms`; answers what the apply did.
    pub async fn submit(&self, change: Change) -> Result<Outcome, CatalogError> {
        let inner = &self.inner;
        let record = CatalogRecord::new(self.epoch(), inner.clock.now_ms(), change);
        let (tx, rx) = oneshot::channel();
        inner.waiters.lock().unwrap_or_else(|e| e.into_inner()).insert(record.change_id, tx);
        let _waiting = Waiting { waiters: &inner.waiters, change_id: record.change_id };
        // Checked after the waiter is in place: a stop clears the waiters after it is set.
        if let Some(why) = self.stopped() {
            return Err(CatalogError::Stopped(why));
        }
        let ms = inner.settings.write_timeout_ms;
        let deadline = Instant::now() + Duration::from_millis(ms);
        let wait = async {
            self.append(&record, deadline).await?;
            rx.await.map_err(|_| CatalogError::Stopped(self.stopped().unwrap_or_default()))
        };
        match tokio::time::timeout_at(deadline.into(), wait).await {
            Ok(outcome) => outcome,
            Err(_) => {
                warn!(change_id = %record.change_id, timeout_ms = ms, "a catalog change was not confirmed and applied in time");
                Err(CatalogError::Unavailable { ms })
            }
        }
    }

    /// Appends one record with a publisher confirm; a failed append is tried once more over a
    /// new connection. A record appended twice (its confirm was lost) is applied once: apply
    /// knows the change ids it applied.
    async fn append(&self, record: &CatalogRecord, deadline: Instant) -> Result<(), CatalogError> {
        let body = record.encode();
        let mut last = None;
        for _ in 0..2 {
            let appender = match self.appender().await {
                Ok(appender) => appender,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            let mut discard = Discard { inner: &self.inner, appender: Some(appender.clone()) };
            let left = deadline.saturating_duration_since(Instant::now()).as_millis().max(1) as u64;
            let appending = stream::append(&appender.channel, &self.inner.settings, &body);
            match appender.link.within("catalog append", left, appending).await {
                Ok(confirmation) if confirmation.is_ack() => {
                    discard.appender = None;
                    return Ok(());
                }
                Ok(_) => {
                    warn!(
                        "the broker refused a catalog record (nack); appending again over a new connection"
                    );
                    last = Some(CatalogError::Nacked);
                }
                Err(e) => {
                    warn!(error = %e, "appending to the catalog failed; connecting again");
                    last = Some(e.into());
                }
            }
        }
        Err(last.unwrap_or(CatalogError::Nacked))
    }

    /// The appender connection, made if there is none or it broke.
    async fn appender(&self) -> Result<Arc<Appender>, CatalogError> {
        let current = || {
            let current = self.inner.appender.lock().unwrap_or_else(|e| e.into_inner());
            current.as_ref().filter(|a| !a.link.broken.is_cancelled()).cloned()
        };
        if let Some(appender) = current() {
            return Ok(appender);
        }
        let _opening = self.inner.opening.lock().await;
        if let Some(appender) = current() {
            return Ok(appender);
        }
        let link = self.connect("webhookd-catalog-append").await?;
        let channel = link
            .within("catalog append set-up", BROKER_TIMEOUT_MS, async {
                let channel = link.channel().await?;
                channel.confirm_select(ConfirmSelectOptions::default()).await?;
                stream::declare(&channel, &self.inner.settings).await?;
                Ok(channel)
            })
            .await?;
        let appender = Arc::new(Appender { link, channel });
        *self.inner.appender.lock().unwrap_or_else(|e| e.into_inner()) = Some(appender.clone());
        Ok(appender)
    }

    async fn connect(&self, name: &str) -> Result<Link, CatalogError> {
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let connection = within(
            None,
            "catalog connect",
            BROKER_TIMEOUT_MS,
            Connection::connect(&self.inner.url, properties),
        )
        .await?;
        Ok(Link::new(connection))
    }

    /// Applies the log until `shutdown`, reconnecting with backoff whenever the broker goes
    /// away. Stops for good at a record it cannot apply (never skips one), at a stream that does
    /// not continue where this replica left it, and when the store fails; proposers then get
    /// [`CatalogError::Stopped`] and events are no longer matched here.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), CatalogError> {
        let applied = run_sessions(
            "catalog applier",
            &shutdown,
            || self.apply_session(&shutdown),
            CatalogError::is_final,
            || {
                self.inner.caught_up.send_replace(false);
                self.inner.metrics.catalog_applier_up.set(0);
            },
        )
        .await;
        // The appender's connection is closed too, so that a stop leaves no channel for lapin
        // to close behind the connection's back (see `Link::close`).
        let appender = self.inner.appender.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(appender) = appender {
            appender.link.close("webhookd stopping").await;
        }
        match &applied {
            Ok(()) => info!("catalog applier stopped"),
            Err(e) => {
                error!(error = %e, "the catalog applier stopped; no catalog change can be applied on this replica and no event is matched here until an operator acts");
                self.inner.stopped.send_replace(Some(e.to_string()));
                self.inner.metrics.catalog_applier_stopped.set(1);
                // Proposers waiting now learn it at once (their senders are dropped).
                self.inner.waiters.lock().unwrap_or_else(|e| e.into_inner()).clear();
            }
        }
        applied
    }

    /// One connection's worth of applying: the stream is checked to be the life of the log
    /// this replica applied (its first record), a replica with an empty store starts from a
    /// snapshot when the stream's first records are gone, then reading resumes at the last
    /// record applied (which must still be there) and applies what follows.
    async fn apply_session(&self, shutdown: &CancellationToken) -> Result<(), CatalogError> {
        let inner = &self.inner;
        let link = self.connect("webhookd-catalog-apply").await?;
        // Events may be matched once a barrier appended now has been applied here; the barrier
        // also makes sure the stream has a first record to look at.
        let gate = self.clone();
        let _gate = AbortOnDropHandle::new(tokio::spawn(async move { gate.open_gate().await }));
        let (first_offset, first) = self.first_record(&link).await?;
        let mut position = inner.store.catalog_position()?;
        match position {
            Some(p) => check_same_log(&p, first_offset, &first)?,
            None if first_offset > 0 => {
                info!(first_offset, "the catalog stream's first records are gone: starting from a snapshot");
                position = Some(self.load_snapshot(&link, first_offset, shutdown).await?);
            }
            None => {}
        }
        let mut consumer = link
            .within("catalog set-up", BROKER_TIMEOUT_MS, async {
                let channel = link.channel().await?;
                stream::read_from(&channel, &inner.settings, position.map(|p| p.offset), "webhookd-catalog")
                    .await
            })
            .await?;
        info!(stream = %inner.settings.stream, from = ?position.map(|p| p.offset), "applying the catalog log");
        inner.metrics.catalog_applier_up.set(1);
        self.apply_records(&link, &mut consumer, position, shutdown).await
    }

    /// The stream's first retained record and its offset (waits for one: the gate's barrier
    /// makes an empty stream have one).
    async fn first_record(&self, link: &Link) -> Result<(u64, CatalogRecord), CatalogError> {
        let inner = &self.inner;
        let (channel, mut consumer) = link
            .within("catalog set-up", BROKER_TIMEOUT_MS, async {
                let channel = link.channel().await?;
                stream::declare(&channel, &inner.settings).await?;
                let consumer =
                    stream::read_from(&channel, &inner.settings, None, "webhookd-catalog-first").await?;
                Ok((channel, consumer))
            })
            .await?;
        let message = tokio::select! {
            _ = link.broken.cancelled() => {
                return Err(webhookd_amqp::StepError::Broken { step: "catalog read", reason: link.reason() }.into());
            }
            next = consumer.next() => next,
        };
        let message = message.ok_or(CatalogError::ConsumerEnded)?.map_err(webhookd_amqp::StepError::from)?;
        let offset = stream::offset_of(&message.properties).ok_or_else(|| CatalogError::BadRecord {
            offset: 0,
            reason: "no x-stream-offset header".into(),
        })?;
        let record = CatalogRecord::decode(&message.data)
            .map_err(|e| CatalogError::BadRecord { offset, reason: e.to_string() })?;
        let _ = link.within("catalog set-up", BROKER_TIMEOUT_MS, channel.close(200, "read".into())).await;
        Ok((offset, record))
    }

    /// Reads the stream from its first record to the first complete snapshot that starts
    /// within it, loads it into the (empty) store and answers its position. A snapshot whose
    /// parts do not add up or do not load is skipped for the next one.
    async fn load_snapshot(
        &self,
        link: &Link,
        first_offset: u64,
        shutdown: &CancellationToken,
    ) -> Result<CatalogPosition, CatalogError> {
        let inner = &self.inner;
        let mut consumer = link
            .within("catalog set-up", BROKER_TIMEOUT_MS, async {
                let channel = link.channel().await?;
                stream::read_from(&channel, &inner.settings, None, "webhookd-catalog-snapshot").await
            })
            .await?;
        let mut assembler = crate::snapshot::Assembler::new(first_offset);
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return Err(CatalogError::ConsumerEnded),
                _ = link.broken.cancelled() => {
                    return Err(webhookd_amqp::StepError::Broken { step: "catalog read", reason: link.reason() }.into());
                }
                next = consumer.next() => next,
            };
            let message = next.ok_or(CatalogError::ConsumerEnded)?.map_err(webhookd_amqp::StepError::from)?;
            link.within("catalog credit", BROKER_TIMEOUT_MS, message.ack(BasicAckOptions::default())).await?;
            // Records are checked by the applier later (from the snapshot on); here only
            // snapshot parts matter.
            let Ok(CatalogRecord { change: Change::SnapshotPart(part), .. }) =
                CatalogRecord::decode(&message.data)
            else {
                continue;
            };
            let Some((position, whole)) = assembler.add(part) else { continue };
            match inner.store.catalog_load(&whole, position).await {
                Ok(()) => {
                    info!(of_offset = position.offset, bytes = whole.len(), "loaded a catalog snapshot");
                    return Ok(position);
                }
                Err(e) if e.is_io() => return Err(e.into()),
                Err(e) => {
                    warn!(of_offset = position.offset, error = %e, "a catalog snapshot does not load; it is skipped")
                }
            }
        }
    }

    /// Whether a snapshot is due after `record` (just applied): enough changes since the last
    /// one, or the last one old enough (log time), or none yet and something to hold.
    fn snapshot_due(&self, record: &CatalogRecord) -> Result<bool, CatalogError> {
        let s = &self.inner.settings;
        let Some(position) = self.inner.store.catalog_position()? else { return Ok(false) };
        let Some(last) = self.inner.store.last_snapshot()? else {
            return Ok(position.changes > 0 && (s.snapshot_every_changes > 0 || s.snapshot_every_seconds > 0));
        };
        let by_count = s.snapshot_every_changes > 0
            && position.changes.saturating_sub(last.changes) >= s.snapshot_every_changes;
        let age_ms = record.log_time_ms.saturating_sub(last.log_time_ms);
        let by_age = s.snapshot_every_seconds > 0 && age_ms >= s.snapshot_every_seconds.saturating_mul(1000);
        Ok(by_count || by_age)
    }

    /// Appends a snapshot of the catalog as of the record just applied (`offset`), in parts,
    /// in the background. The dump is taken here, before the next record is applied.
    fn write_snapshot(&self, offset: u64, change_id: Uuid) {
        use std::sync::atomic::Ordering;
        let inner = &self.inner;
        if inner.snapshotting.swap(true, Ordering::AcqRel) {
            return;
        }
        let dump = match inner.store.catalog_dump() {
            Ok(dump) => dump,
            Err(e) => {
                warn!(error = %e, "cannot take a catalog snapshot");
                inner.snapshotting.store(false, Ordering::Release);
                return;
            }
        };
        let position = inner.store.catalog_position().ok().flatten();
        let (epoch, changes) = position.map_or((Uuid::nil(), 0), |p| (p.epoch, p.changes));
        let sha256 = crate::snapshot::digest(&dump);
        let chunks = crate::snapshot::split(&dump, inner.settings.snapshot_part_bytes);
        let (catalog, id, parts) = (self.clone(), Uuid::new_v4(), chunks.len() as u32);
        tokio::spawn(async move {
            let clear = &catalog.inner.snapshotting;
            for (part, data) in chunks.into_iter().enumerate() {
                let snapshot = SnapshotPart {
                    id,
                    epoch,
                    of_offset: offset,
                    of_change_id: change_id,
                    changes,
                    part: part as u32,
                    parts,
                    sha256: sha256.clone(),
                    data,
                };
                let record =
                    CatalogRecord::new(epoch, catalog.inner.clock.now_ms(), Change::SnapshotPart(snapshot));
                let deadline =
                    Instant::now() + Duration::from_millis(catalog.inner.settings.write_timeout_ms);
                if let Err(e) = catalog.append(&record, deadline).await {
                    warn!(error = %e, snapshot = %id, "a catalog snapshot could not be appended; a later record tries again");
                    clear.store(false, Ordering::Release);
                    return;
                }
            }
            info!(snapshot = %id, of_offset = offset, parts, "appended a catalog snapshot");
            clear.store(false, Ordering::Release);
        });
    }

    /// Appends barriers until one is applied here, then marks this replica caught up.
    async fn open_gate(&self) {
        loop {
            match self.submit(Change::Barrier).await {
                Ok(_) => {
                    self.inner.caught_up.send_replace(true);
                    info!("the catalog is caught up; events are matched");
                    return;
                }
                Err(CatalogError::Stopped(_)) => return,
                Err(e) => {
                    warn!(error = %e, "the catalog barrier was not applied; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Applies records as they come until `shutdown` or an error. The first record must be
    /// the one last applied (`resume`), or, for a store that applied none, the stream's first.
    async fn apply_records(
        &self,
        link: &Link,
        consumer: &mut lapin::Consumer,
        resume: Option<CatalogPosition>,
        shutdown: &CancellationToken,
    ) -> Result<(), CatalogError> {
        let inner = &self.inner;
        let mut first = true;
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => {
                    link.close("webhookd stopping").await;
                    return Ok(());
                }
                _ = link.broken.cancelled() => {
                    return Err(webhookd_amqp::StepError::Broken { step: "catalog read", reason: link.reason() }.into());
                }
                next = consumer.next() => next,
            };
            let message = match next {
                Some(message) => message.map_err(webhookd_amqp::StepError::from)?,
                None => return Err(CatalogError::ConsumerEnded),
            };
            let Some(offset) = stream::offset_of(&message.properties) else {
                return Err(CatalogError::BadRecord {
                    offset: 0,
                    reason: "no x-stream-offset header".into(),
                });
            };
            let record = CatalogRecord::decode(&message.data)
                .map_err(|e| CatalogError::BadRecord { offset, reason: e.to_string() })?;
            if std::mem::take(&mut first) {
                match resume {
                    Some(p) if p.offset == offset && p.change_id == record.change_id => {
                        link.within("catalog credit", BROKER_TIMEOUT_MS, message.ack(BasicAckOptions::default()))
                            .await?;
                        continue;
                    }
                    Some(p) => {
                        return Err(CatalogError::Diverged(format!(
                            "this replica applied up to offset {} (change {}), the stream has change {} at offset {offset}: \
                             it was deleted and created again, or lost its last records",
                            p.offset, p.change_id, record.change_id
                        )))
                    }
                    None if offset != 0 => {
                        return Err(CatalogError::Diverged(format!(
                            "the stream starts at offset {offset}: its first records are gone (retention), \
                             and this replica, with an empty store, needs them"
                        )))
                    }
                    None => {}
                }
            }
            let applied = inner.store.apply_record(&record, offset)?;
            let outcome = match applied {
                Applied::Changed(previous) => Some(Ok(previous)),
                Applied::Refused(refusal) => Some(Err(refusal)),
                Applied::Repeated => None,
                Applied::Seen => {
                    return Err(CatalogError::Diverged(format!(
                        "offset {offset} comes after offset {:?}, which is not before it",
                        self.applied_offset()
                    )))
                }
            };
            inner.applied.send_replace(Some(offset));
            inner.metrics.catalog_applied_offset.set(offset as i64);
            let lag_ms = inner.clock.now_ms().saturating_sub(record.log_time_ms);
            inner.metrics.catalog_apply_lag.set(lag_ms as f64 / 1000.0);
            // The proposer learns the outcome before the credit: a failed ack must not leave it
            // waiting for a record that is applied (reading resumes after it).
            let mut own = false;
            if let Some(outcome) = outcome {
                let waiter =
                    inner.waiters.lock().unwrap_or_else(|e| e.into_inner()).remove(&record.change_id);
                if let Some(waiter) = waiter {
                    own = true;
                    let _ = waiter.send(outcome);
                }
            }
            // The replica whose record reaches the count or the age writes the snapshot (one
            // replica proposed each record, so normally one snapshot is written).
            if own && self.snapshot_due(&record)? {
                self.write_snapshot(offset, record.change_id);
            }
            // An ack on a stream is credit for more records, not removal.
            link.within("catalog credit", BROKER_TIMEOUT_MS, message.ack(BasicAckOptions::default())).await?;
        }
    }
}

/// Checks that the stream, whose first retained record is `first` at `first_offset`, is the
/// life of the log this replica applied up to `p`: a stream deleted and created again has
/// another first record, and is noticed at once, before anything is read from it.
fn check_same_log(p: &CatalogPosition, first_offset: u64, first: &CatalogRecord) -> Result<(), CatalogError> {
    if first_offset > p.offset {
        return Err(CatalogError::Diverged(format!(
            "the stream starts at offset {first_offset}, after this replica's last record (offset {}): the records \
             between are gone (retention); empty this replica's data dir so that it starts from a snapshot",
            p.offset
        )));
    }
    let same = if first_offset == 0 {
        first.change_id == p.epoch
    } else {
        // A record keeps the life its proposer knew (nil if it knew none).
        let stamped = match &first.change {
            Change::SnapshotPart(part) => part.epoch,
            _ => first.epoch,
        };
        stamped.is_nil() || stamped == p.epoch
    };
    if same {
        Ok(())
    } else {
        Err(CatalogError::Diverged(format!(
            "the stream's first record (offset {first_offset}, change {}) is not of the log this replica applied \
             (log {}): the stream was deleted and created again",
            first.change_id, p.epoch
        )))
    }
}
