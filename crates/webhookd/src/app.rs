//! Opening, running and stopping webhookd.
//!
//! Data flows one way: AMQP -> match -> send -> ack, with failures handed to the broker's retry
//! tiers. The ingestion owns the broker connection and hands every delivery to the dispatch
//! side; the delivery log hears of each step afterwards. The API changes the catalog through
//! its log and queues redeliveries through the dispatch side.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use webhookd_api::ApiState;
use webhookd_catalog::Catalog;
use webhookd_core::clock::Clock;
use webhookd_core::signing::{KeyRing, SharedKeys};
use webhookd_delivery::Dispatch;
use webhookd_ingest::{Ingest, IngestStatus};
use webhookd_metrics::Metrics;
use webhookd_store::Store;

use crate::config::Config;
use crate::keys;

/// How a run of webhookd ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Asked to stop.
    Shutdown,
    /// The store cannot be written (the reason); see [`crate::degraded`].
    StoreFailed(String),
}

/// Runs webhookd until `shutdown`. When the store cannot be written any more, it stops the
/// parts, answers "not ready" until the store can be written again, and starts again.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    loop {
        let app = App::open(config.clone())?;
        let running = app.start(shutdown.child_token()).await?;
        match running.wait().await? {
            Stopped::Shutdown => return Ok(()),
            Stopped::StoreFailed(reason) => {
                error!(%reason, "the store cannot be written: stopped taking messages (they stay in RabbitMQ) \
                       and answering not ready until it can be written again");
                let store_dir = config.data_dir.join("store");
                let listen = &config.http.listen;
                if !crate::degraded::wait_for_store(listen, &store_dir, reason, &shutdown).await? {
                    return Ok(());
                }
            }
        }
    }
}

/// An opened, not yet running webhookd.
pub struct App {
    config: Arc<Config>,
    store: Store,
    keys: SharedKeys,
}

/// A running webhookd.
pub struct Running {
    /// Where the HTTP API listens.
    pub http_addr: SocketAddr,
    /// The ingestion's live status.
    pub ingest: Arc<IngestStatus>,
    /// The store (shared with the running parts).
    pub store: Store,
    /// The catalog (its log applied to the store).
    pub catalog: Catalog,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<Stopped>>,
}

impl App {
    /// Opens the store and the keys in the data dir.
    pub fn open(config: Config) -> anyhow::Result<App> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
        let store = Store::open_with(&config.data_dir.join("store"), &config.store).with_context(|| {
            format!("cannot open the store in {} (is another webhookd using it?)", config.data_dir.display())
        })?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let keys = keys::load_or_create(&config.data_dir, &config.signing, now)?;
        Ok(App { config: Arc::new(config), store, keys: SharedKeys::new(keys) })
    }

    /// The store, e.g. for tests and CLI commands that work on it directly.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The signing keys in use now.
    pub fn keys(&self) -> Arc<KeyRing> {
        self.keys.current()
    }

    /// Binds the HTTP listener and starts every part; `shutdown` stops them all.
    pub async fn start(self, shutdown: CancellationToken) -> anyhow::Result<Running> {
        let config = self.config.clone();
        let listener = tokio::net::TcpListener::bind(&config.http.listen)
            .await
            .with_context(|| format!("cannot listen on http.listen = {}", config.http.listen))?;
        let http_addr = listener.local_addr()?;
        let tls = match (config.http.tls_cert_file.trim(), config.http.tls_key_file.trim()) {
            ("", _) | (_, "") => None,
            (cert, key) => Some(
                webhookd_api::tls::Tls::load(std::path::Path::new(cert), std::path::Path::new(key))
                    .context("cannot serve the API over TLS")?,
            ),
        };
        let clock = Clock::scaled(config.delivery.time_scale);
        let metrics = Arc::new(Metrics::new());
        let apis = webhookd_core::subscription::Api::ALL.map(|a| a.as_str());
        metrics.prime(
            &apis,
            &["balance.changed", "order.finalized", "test", "invalid"],
            &webhookd_core::event::Poison::LABELS,
        );

        let catalog = Catalog::new(
            self.store.clone(),
            config.catalog.clone(),
            config.catalog_url(),
            clock,
            metrics.clone(),
        );
        let (dispatch, recorder) = Dispatch::new(
            self.store.clone(),
            &config.delivery,
            config.retry.clone(),
            self.keys.clone(),
            clock,
            metrics.clone(),
            Arc::new(config.destinations.clone()),
        )?;
        let prober = dispatch.prober();
        let follower = webhookd_delivery::Follower::new(
            self.store.clone(),
            &config.delivery,
            config.delivery_log_url(),
            clock,
            metrics.clone(),
        )
        .with_retention(config.retention.keep_finished_seconds.saturating_mul(1000), config.retention.batch);
        // Events are matched only once this replica has applied the catalog log up to a barrier
        // of its own: a replica that is starting (or reconnecting) never matches with a catalog
        // that misses changes answered before.
        let mut ingest =
            Ingest::new(self.store.clone(), config.amqp.clone(), clock, metrics.clone(), dispatch.clone())
                .with_gate(catalog.caught_up());
        // And each batch waits for a barrier of its own: an event published after any replica
        // answered a change is matched with it.
        if config.catalog.barrier_per_batch {
            let synced = catalog.clone();
            ingest = ingest.with_barrier(Arc::new(move || {
                let catalog = synced.clone();
                Box::pin(async move { catalog.sync().await.map_err(|e| e.to_string()) })
            }));
        }
        let ingest_status = ingest.status();
        let readiness_status = ingest_status.clone();
        let readiness_catalog = catalog.clone();
        let state = ApiState {
            store: self.store.clone(),
            catalog: catalog.clone(),
            keys: self.keys.clone(),
            retired_key_publish_secs: (config.signing.retired_key_publish_hours * 3600) as i64,
            readiness: Arc::new(move || {
                if !readiness_status.connected.load(Ordering::Relaxed) {
                    return Err("not connected to the broker".into());
                }
                if !readiness_status.consuming.load(Ordering::Relaxed) {
                    return Err("not consuming".into());
                }
                if let Some(why) = readiness_catalog.stopped() {
                    return Err(format!("the catalog applier stopped: {why}"));
                }
                if !readiness_catalog.is_caught_up() {
                    return Err("the catalog is not caught up".into());
                }
                Ok(())
            }),
            metrics,
            obp: Arc::new(config.obp.clone()),
            rabo: Arc::new(config.rabo.clone()),
            destinations: Arc::new(config.destinations.clone()),
            prober,
            dispatch,
            idempotency_in_flight: Arc::default(),
            running_config: Arc::new(webhookd_api::state::RunningConfig {
                source: config.source.describe(),
                started_at: webhookd_core::clock::rfc3339_ms(clock.now_ms()),
                toml: config.to_masked_toml(),
            }),
        };
        info!(http = %http_addr, amqp_queue = %config.amqp.queue, "webhookd starting");
        let hangups = crate::reload::hangups(shutdown.clone());
        if let Some(tls) = &tls {
            tokio::spawn(crate::reload::reload_tls(
                tls.clone(),
                config.http.tls_reload_check_ms,
                hangups.clone(),
                shutdown.clone(),
            ));
        }
        tokio::spawn(crate::reload::reload_keys(
            keys::KeySource::new(&config.signing, &config.data_dir),
            self.keys.clone(),
            config.signing.reload_check_ms,
            hangups.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(say_how_to_make_a_token(
            catalog.clone(),
            self.store.clone(),
            config.obp.banks.first().cloned(),
            shutdown.clone(),
        ));

        let store = self.store.clone();
        let running_catalog = catalog.clone();
        let token = shutdown.clone();
        let maintenance_metrics = state.metrics.clone();
        let task = tokio::spawn(async move {
            let mut parts = tokio::task::JoinSet::new();
            let t = token.clone();
            parts.spawn(async move { ("ingestion", ingest.run(t).await.map_err(anyhow::Error::from)) });
            let t = token.clone();
            parts.spawn(async move {
                ("HTTP API", webhookd_api::serve(listener, state, tls, t).await.map_err(anyhow::Error::from))
            });
            // An applier stopped at a record it cannot apply keeps its offset and this process
            // up (answering not ready), rather than a restart loop that would stop there again.
            let (applier, t) = (running_catalog.clone(), token.clone());
            parts.spawn(async move {
                match applier.run(t.clone()).await {
                    // The disk: the store watch restarts everything once it can be written.
                    Err(webhookd_catalog::CatalogError::Store(e)) if e.is_io() => {
                        applier.store().note_error(&e);
                        ("catalog applier", Err(webhookd_catalog::CatalogError::Store(e).into()))
                    }
                    _ => {
                        t.cancelled().await;
                        ("catalog applier", Ok(()))
                    }
                }
            });
            // The same for the delivery log follower: a record it cannot read stops only the
            // view's updates; deliveries go on.
            let t = token.clone();
            parts.spawn(async move {
                match follower.run(t.clone()).await {
                    Err(webhookd_delivery::FollowError::Store(e)) if e.is_io() => {
                        ("delivery log follower", Err(webhookd_delivery::FollowError::Store(e).into()))
                    }
                    _ => {
                        t.cancelled().await;
                        ("delivery log follower", Ok(()))
                    }
                }
            });
            let (cat, c, t) = (running_catalog.clone(), config.clone(), token.clone());
            parts.spawn(async move {
                crate::maintenance::run(cat, c, maintenance_metrics, t).await;
                ("maintenance", Ok(()))
            });
            // A store that cannot be written stops every part (sled stays failed until reopened).
            let (s, t) = (store.clone(), token.clone());
            parts.spawn(async move {
                tokio::select! {
                    _ = t.cancelled() => ("store watch", Ok(())),
                    reason = s.failed() => ("store watch", Err(anyhow::anyhow!("the store cannot be written: {reason}"))),
                }
            });
            // The first part to end, for whatever reason, stops all the others: a webhookd
            // that lost a part must not look alive (the process exits non-zero and is restarted).
            let mut failure: Option<anyhow::Error> = None;
            while let Some(joined) = parts.join_next().await {
                let (name, result) = match joined {
                    Ok(ended) => ended,
                    Err(e) => ("a task", Err(anyhow::anyhow!("panicked: {e}"))),
                };
                if !token.is_cancelled() {
                    error!(part = name, "a part of webhookd stopped on its own; stopping the rest");
                    failure.get_or_insert_with(|| anyhow::anyhow!("the {name} stopped unexpectedly"));
                    token.cancel();
                }
                if let Err(e) = result {
                    error!(part = name, error = %format!("{e:#}"), "part failed");
                    failure.get_or_insert(e.context(format!("the {name} failed")));
                }
            }
            // Every part is done: the delivery log recorder answers what it was handed and ends.
            // Attempts still running past the shutdown grace keep it alive, but nothing they
            // report can be acknowledged any more (the ingestion's connection is closed, their
            // messages are back in the queue and repeated), so it is given little time.
            if tokio::time::timeout(std::time::Duration::from_secs(1), recorder).await.is_err() {
                warn!(
                    "the delivery log recorder did not finish; attempts cut short by the stop are repeated"
                );
            }
            // A disk that fails: noted by whichever part saw it first, or by this last flush.
            let flushed = match store.fault() {
                Some(_) => Ok(()),
                None => store.flush().await,
            };
            if let Some(reason) = store.fault() {
                return Ok(Stopped::StoreFailed(reason));
            }
            flushed?;
            match failure {
                Some(e) => Err(e),
                None => {
                    info!("webhookd stopped");
                    Ok(Stopped::Shutdown)
                }
            }
        });
        Ok(Running { http_addr, ingest: ingest_status, store: self.store, catalog, shutdown, task })
    }
}

impl Running {
    /// Asks every part to stop.
    pub fn stop(&self) {
        self.shutdown.cancel();
    }

    /// Waits until every part has stopped.
    pub async fn wait(self) -> anyhow::Result<Stopped> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => {
                error!(error = %e, "webhookd task failed");
                Err(e.into())
            }
        }
    }
}

/// On a first start nothing can call the management APIs: once the catalog is caught up and
/// holds no usable token, says how to make one.
async fn say_how_to_make_a_token(
    catalog: Catalog,
    store: Store,
    bank: Option<String>,
    shutdown: CancellationToken,
) {
    let mut caught_up = catalog.caught_up();
    tokio::select! {
        _ = shutdown.cancelled() => return,
        ready = caught_up.wait_for(|c| *c) => if ready.is_err() { return },
    }
    let Ok(tokens) = store.tokens() else { return };
    if tokens.iter().any(|t| t.revoked_at_ms.is_none()) {
        return;
    }
    let bank = bank.unwrap_or_else(|| "<bank id>".into());
    info!(
        "no API token exists yet, so every management API call answers 401. Make one (it reaches \
         every replica, shown once) with: webhookd token create --user-id <you> \
         --role CanCreateWebhook@{bank} --role CanGetWebhooks@{bank} --role CanUpdateWebhook@{bank} \
         --role CanManageDeliveries [--merchant-id <merchant>, for the Rabo API]"
    );
}
