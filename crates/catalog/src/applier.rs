//! The catalog's one owner: proposers append changes and wait for their own apply; the applier
//! reads the stream in order and applies every record to this replica's store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, ConfirmSelectOptions};
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use uuid::Uuid;
use webhookd_amqp::{within, Link};
use webhookd_core::catalog::{CatalogRecord, Change};
use webhookd_core::clock::Clock;
use webhookd_core::subscription::Subscription;
use webhookd_store::{Applied, Store, StoreError};

use crate::settings::CatalogSettings;
use crate::stream;
use crate::CatalogError;

/// What a change did, as every replica computed it: the subscription as it was before, or why
/// the catalog's state refused the change.
pub type Outcome = Result<Option<Subscription>, StoreError>;

/// The epoch records carry until epochs (a log deleted and created again) are tracked: every
/// record of one stream compares by offset alone.
const EPOCH: Uuid = Uuid::nil();

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
    /// Proposers waiting for their change to be applied here, by change id.
    waiters: Mutex<HashMap<Uuid, oneshot::Sender<Outcome>>>,
    /// The connection and confirm-mode channel appends go through, made on first use and again
    /// after a failure.
    appender: tokio::sync::Mutex<Option<(Link, Channel)>>,
    /// The offset of the last record applied here.
    applied: watch::Sender<Option<u64>>,
    /// Why the applier stopped, once it has.
    stopped: watch::Sender<Option<String>>,
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

impl Catalog {
    /// A catalog over `store`, with its log in the stream `settings.stream` of the broker at
    /// `amqp_url`; nothing is applied until [`Catalog::run`] runs.
    pub fn new(store: Store, settings: CatalogSettings, amqp_url: String, clock: Clock) -> Catalog {
        Catalog {
            inner: Arc::new(Inner {
                store,
                settings,
                url: amqp_url,
                clock,
                waiters: Mutex::default(),
                appender: tokio::sync::Mutex::default(),
                applied: watch::Sender::new(None),
                stopped: watch::Sender::new(None),
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

    /// Appends `change` to the log and waits until this replica has applied it, at most
    /// `catalog.write_timeout_ms`; answers what the apply did.
    pub async fn submit(&self, change: Change) -> Result<Outcome, CatalogError> {
        let inner = &self.inner;
        if let Some(why) = self.stopped() {
            return Err(CatalogError::Stopped(why));
        }
        let record = CatalogRecord::new(EPOCH, inner.clock.now_ms(), change);
        let (tx, rx) = oneshot::channel();
        inner.waiters.lock().unwrap_or_else(|e| e.into_inner()).insert(record.change_id, tx);
        let _waiting = Waiting { waiters: &inner.waiters, change_id: record.change_id };
        let ms = inner.settings.write_timeout_ms;
        let wait = async {
            self.append(&record).await?;
            rx.await.map_err(|_| CatalogError::Stopped(self.stopped().unwrap_or_default()))
        };
        match tokio::time::timeout(Duration::from_millis(ms), wait).await {
            Ok(outcome) => outcome,
            Err(_) => {
                warn!(change_id = %record.change_id, timeout_ms = ms, "a catalog change was not confirmed and applied in time");
                Err(CatalogError::Unavailable { ms })
            }
        }
    }

    /// Appends one record with a publisher confirm, over the appender connection (made again
    /// once if it failed: a record appended twice is applied twice, which every change
    /// tolerates, and its proposer gets the first outcome).
    async fn append(&self, record: &CatalogRecord) -> Result<(), CatalogError> {
        let body = record.encode();
        let mut last = None;
        for _ in 0..2 {
            let mut appender = self.inner.appender.lock().await;
            if appender.is_none() {
                match self.open_appender().await {
                    Ok(open) => *appender = Some(open),
                    Err(e) => {
                        last = Some(e);
                        continue;
                    }
                }
            }
            let Some((link, channel)) = appender.as_ref() else { continue };
            let appended = link
                .within("catalog append", self.inner.settings.write_timeout_ms, async {
                    match stream::append(channel, &self.inner.settings, &body).await {
                        Ok(()) => Ok(Ok(())),
                        Err(stream::AppendError::Amqp(e)) => Err(e),
                        Err(nack) => Ok(Err(nack)),
                    }
                })
                .await;
            match appended {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(nack)) => return Err(nack.into()),
                Err(e) => {
                    warn!(error = %e, "appending to the catalog failed; connecting again");
                    *appender = None;
                    last = Some(e.into());
                }
            }
        }
        Err(last.unwrap_or(CatalogError::Unavailable { ms: self.inner.settings.write_timeout_ms }))
    }

    async fn open_appender(&self) -> Result<(Link, Channel), CatalogError> {
        let link = self.connect("webhookd-catalog-append").await?;
        let channel = link
            .within("catalog append set-up", BROKER_TIMEOUT_MS, async {
                let channel = link.connection.create_channel().await?;
                channel.confirm_select(ConfirmSelectOptions::default()).await?;
                stream::declare(&channel, &self.inner.settings).await?;
                Ok(channel)
            })
            .await?;
        Ok((link, channel))
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
    /// away. Stops with an error at a record it cannot apply (never skips one) and when the
    /// store cannot be written; proposers then get [`CatalogError::Stopped`].
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), CatalogError> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times();
        let session = || async {
            match self.apply_session(&shutdown).await {
                Ok(()) => Ok(Ok(())),
                Err(e @ (CatalogError::BadRecord { .. } | CatalogError::Store(_))) => Ok(Err(e)),
                Err(e) => Err(e),
            }
        };
        let applying = session
            .retry(backoff)
            .notify(|e, delay| warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "catalog applier lost the broker"));
        let result = tokio::select! {
            _ = shutdown.cancelled() => Ok(Ok(())),
            result = applying => result,
        };
        match result {
            Ok(Ok(())) => {
                info!("catalog applier stopped");
                Ok(())
            }
            Ok(Err(e)) | Err(e) => {
                error!(error = %e, "the catalog applier stopped; no catalog change can be applied on this replica");
                self.inner.stopped.send_replace(Some(e.to_string()));
                // Proposers waiting now learn it at once (their senders are dropped).
                self.inner.waiters.lock().unwrap_or_else(|e| e.into_inner()).clear();
                Err(e)
            }
        }
    }

    /// One connection's worth of applying: from the record after the last one applied.
    async fn apply_session(&self, shutdown: &CancellationToken) -> Result<(), CatalogError> {
        let inner = &self.inner;
        let link = self.connect("webhookd-catalog-apply").await?;
        let from = inner.store.catalog_position()?.map(|p| p.offset + 1);
        let mut consumer = link
            .within("catalog set-up", BROKER_TIMEOUT_MS, async {
                let channel = link.connection.create_channel().await?;
                stream::declare(&channel, &inner.settings).await?;
                stream::read_from(&channel, &inner.settings, from, "webhookd-catalog").await
            })
            .await?;
        info!(stream = %inner.settings.stream, from = ?from, "applying the catalog log");
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = link.within("close", BROKER_TIMEOUT_MS, link.connection.close(200, "webhookd stopping".into())).await;
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
            let applied = inner.store.apply_record(&record, offset)?;
            // An ack on a stream is credit for more records, not removal.
            link.within("catalog credit", BROKER_TIMEOUT_MS, message.ack(BasicAckOptions::default())).await?;
            inner.applied.send_replace(Some(offset));
            let outcome = match applied {
                Applied::Changed(previous) => Ok(previous),
                Applied::Refused(refusal) => Err(refusal),
                Applied::Seen => continue,
            };
            let waiter = inner.waiters.lock().unwrap_or_else(|e| e.into_inner()).remove(&record.change_id);
            if let Some(waiter) = waiter {
                let _ = waiter.send(outcome);
            }
        }
    }
}
