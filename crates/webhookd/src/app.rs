//! Opening, running and stopping webhookd.
//!
//! Data flows one way: AMQP -> match -> durable outbox -> deliver -> record. The ingestion and
//! the engine share only the store (and its due signal); the API reads and writes the same
//! store through the same functions.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use webhookd_api::ApiState;
use webhookd_core::clock::Clock;
use webhookd_core::signing::KeyRing;
use webhookd_delivery::Engine;
use webhookd_ingest::{Ingest, IngestStatus};
use webhookd_metrics::Metrics;
use webhookd_store::Store;

use crate::config::Config;
use crate::keys;

/// An opened, not yet running webhookd.
pub struct App {
    config: Arc<Config>,
    store: Store,
    keys: Arc<KeyRing>,
}

/// A running webhookd.
pub struct Running {
    /// Where the HTTP API listens.
    pub http_addr: SocketAddr,
    /// The ingestion's live status.
    pub ingest: Arc<IngestStatus>,
    /// The store (shared with the running parts).
    pub store: Store,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl App {
    /// Opens the store and the keys in the data dir.
    pub fn open(config: Config) -> anyhow::Result<App> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
        let store = Store::open(&config.data_dir.join("store")).with_context(|| {
            format!("cannot open the store in {} (is another webhookd using it?)", config.data_dir.display())
        })?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let keys = keys::load_or_create(&config.data_dir, &config.signing, now)?;
        Ok(App { config: Arc::new(config), store, keys: Arc::new(keys) })
    }

    /// The store, e.g. for tests and CLI commands that work on it directly.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The signing keys.
    pub fn keys(&self) -> &Arc<KeyRing> {
        &self.keys
    }

    /// Binds the HTTP listener and starts every part; `shutdown` stops them all.
    pub async fn start(self, shutdown: CancellationToken) -> anyhow::Result<Running> {
        let config = self.config.clone();
        let listener = tokio::net::TcpListener::bind(&config.http.listen)
            .await
            .with_context(|| format!("cannot listen on http.listen = {}", config.http.listen))?;
        let http_addr = listener.local_addr()?;
        let clock = Clock::scaled(config.delivery.time_scale);
        let metrics = Arc::new(Metrics::new());
        let apis = webhookd_core::subscription::Api::ALL.map(|a| a.as_str());
        metrics.prime(
            &apis,
            &["balance.changed", "order.finalized", "test", "invalid"],
            &webhookd_core::event::Poison::LABELS,
        );

        let ingest = Ingest::new(self.store.clone(), config.amqp.clone(), clock, metrics.clone());
        let ingest_status = ingest.status();
        let engine = Engine::new(
            self.store.clone(),
            config.delivery.clone(),
            config.retry.clone(),
            self.keys.signer(),
            clock,
            metrics.clone(),
            Arc::new(config.destinations.clone()),
        )?;
        let prober = engine.prober();
        let readiness_status = ingest_status.clone();
        let state = ApiState {
            store: self.store.clone(),
            keys: self.keys.clone(),
            retired_key_publish_secs: (config.signing.retired_key_publish_hours * 3600) as i64,
            readiness: Arc::new(move || {
                if !readiness_status.connected.load(Ordering::Relaxed) {
                    return Err("not connected to the broker".into());
                }
                if !readiness_status.consuming.load(Ordering::Relaxed) {
                    return Err("not consuming".into());
                }
                Ok(())
            }),
            metrics,
            obp: Arc::new(config.obp.clone()),
            rabo: Arc::new(config.rabo.clone()),
            destinations: Arc::new(config.destinations.clone()),
            prober,
        };
        info!(http = %http_addr, amqp_queue = %config.amqp.queue, "webhookd starting");

        let store = self.store.clone();
        let token = shutdown.clone();
        let maintenance_metrics = state.metrics.clone();
        let task = tokio::spawn(async move {
            let ingest_task = tokio::spawn(ingest.run(token.clone()));
            let engine_task = tokio::spawn(engine.run(token.clone()));
            let api_task = tokio::spawn(webhookd_api::serve(listener, state, token.clone()));
            let maintenance_task = tokio::spawn(crate::maintenance::run(
                store.clone(),
                config.clone(),
                maintenance_metrics,
                token.clone(),
            ));
            // Any part ending on its own (an error) stops the others too.
            let ingest_result = ingest_task.await;
            token.cancel();
            let engine_result = engine_task.await;
            let api_result = api_task.await;
            let _ = maintenance_task.await;
            store.flush().await?;
            ingest_result.context("ingestion task")??;
            engine_result.context("delivery task")??;
            api_result.context("API task")??;
            info!("webhookd stopped");
            Ok(())
        });
        Ok(Running { http_addr, ingest: ingest_status, store: self.store, shutdown, task })
    }
}

impl Running {
    /// Asks every part to stop.
    pub fn stop(&self) {
        self.shutdown.cancel();
    }

    /// Waits until every part has stopped.
    pub async fn wait(self) -> anyhow::Result<()> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => {
                error!(error = %e, "webhookd task failed");
                Err(e.into())
            }
        }
    }
}
