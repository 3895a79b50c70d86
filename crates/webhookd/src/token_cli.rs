//! `webhookd token create|list|revoke`: token changes travel through the catalog log like every
//! other catalog change, so they work while replicas serve (no store lock, no downtime) and
//! reach every replica within its apply lag. Only the hash of a secret enters the log.
//!
//! A command reads the log into a throwaway store with an applier of its own, then appends its
//! change and waits until that store has applied it: it answers what every replica applies.

use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use webhookd_catalog::{Catalog, CatalogError};
use webhookd_core::auth::{MintedToken, RoleGrant, TokenRecord};
use webhookd_core::catalog::Change;
use webhookd_core::clock::Clock;
use webhookd_metrics::Metrics;
use webhookd_store::{Store, StoreError};

use crate::Config;

/// How long a command waits to read the catalog log up to its end.
const CATCH_UP_PATIENCE: Duration = Duration::from_secs(120);

/// The catalog, read up to the end of its log into a throwaway store.
pub struct LogClient {
    catalog: Catalog,
    shutdown: CancellationToken,
    applier: JoinHandle<Result<(), CatalogError>>,
    // The throwaway store lives here; removed on drop.
    _dir: tempfile::TempDir,
}

/// What a new token is to be.
pub struct NewToken {
    /// The caller's user id.
    pub user_id: String,
    /// The merchant it acts for on the Rabo routes, if any.
    pub merchant_id: Option<String>,
    /// Its roles.
    pub roles: Vec<RoleGrant>,
    /// A note for operators.
    pub note: Option<String>,
}

impl LogClient {
    /// Connects to the catalog log of `config` and reads it to its end.
    pub async fn open(config: &Config) -> anyhow::Result<LogClient> {
        // Beside the data dir, which has room for a catalog (a container's /tmp may not).
        let scratch = tempfile::Builder::new().prefix(".token-cli-").tempdir_in(&config.data_dir);
        let dir = match scratch {
            Ok(dir) => dir,
            Err(_) => tempfile::Builder::new().prefix("webhookd-token-cli-").tempdir()?,
        };
        let store = Store::open(dir.path())?;
        let metrics = std::sync::Arc::new(Metrics::new());
        // A command reads and appends; snapshots are for the replicas to write.
        let mut settings = config.catalog.clone();
        settings.snapshot_every_changes = 0;
        settings.snapshot_every_seconds = 0;
        let catalog = Catalog::new(store, settings, config.catalog_url(), Clock::real(), metrics);
        let shutdown = CancellationToken::new();
        let applier = tokio::spawn({
            let (catalog, shutdown) = (catalog.clone(), shutdown.clone());
            async move { catalog.run(shutdown).await }
        });
        let client = LogClient { catalog, shutdown, applier, _dir: dir };
        let mut caught_up = client.catalog.caught_up();
        let waited = tokio::time::timeout(CATCH_UP_PATIENCE, caught_up.wait_for(|c| *c)).await;
        if let Some(why) = client.catalog.stopped() {
            anyhow::bail!("cannot read the catalog log: {why}");
        }
        if waited.is_err() {
            anyhow::bail!(
                "the catalog log (stream {}) could not be read to its end within {} s: is the broker \
                 reachable (catalog.url, or amqp.url when that is empty)?",
                config.catalog.stream,
                CATCH_UP_PATIENCE.as_secs()
            );
        }
        Ok(client)
    }

    /// Every token (revoked ones included), in id order.
    pub fn tokens(&self) -> anyhow::Result<Vec<TokenRecord>> {
        Ok(self.catalog.store().tokens()?)
    }

    /// Mints a token and adds its hash to the catalog; the secret is in the answer only.
    pub async fn create(&self, new: NewToken, now_ms: u64) -> anyhow::Result<MintedToken> {
        anyhow::ensure!(!new.user_id.trim().is_empty(), "--user-id must not be empty");
        let minted = webhookd_core::auth::mint_token();
        let token = TokenRecord {
            id: minted.id.clone(),
            hash: minted.hash,
            user_id: new.user_id,
            merchant_id: new.merchant_id,
            roles: new.roles,
            created_at_ms: now_ms,
            revoked_at_ms: None,
            note: new.note,
        };
        self.submit(Change::AddToken { token }).await?;
        Ok(minted)
    }

    /// Revokes a token on every replica.
    pub async fn revoke(&self, id: &str) -> anyhow::Result<()> {
        match self.catalog.submit(Change::RevokeToken { id: id.to_string() }).await? {
            Ok(_) => Ok(()),
            Err(StoreError::NotFound(_)) => anyhow::bail!("there is no token {id}"),
            Err(e) => Err(e.into()),
        }
    }

    async fn submit(&self, change: Change) -> anyhow::Result<()> {
        self.catalog.submit(change).await.context("the catalog change was not applied")??;
        Ok(())
    }

    /// Stops reading the log.
    pub async fn close(self) {
        self.shutdown.cancel();
        let _ = self.applier.await;
    }
}
