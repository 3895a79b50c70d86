//! The catalog as every replica applies it: subscriptions, tokens and idempotency keys change
//! only here, one log record per transaction, together with the log position.
//!
//! Apply is a pure function of the stored state and the record (its log time is the only
//! clock), so replicas that applied the same records hold the same catalog
//! ([`Store::catalog_digest`]).

use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::Transactional;
use uuid::Uuid;
use webhookd_core::catalog::{CatalogRecord, Change};
use webhookd_core::subscription::Subscription;

use crate::subscriptions::{change_in, TxResult};
use crate::{decode, encode, idempotency, tokens, Result, Store, StoreError};

/// Where the catalog log has been applied up to, kept in `meta` in the transaction of each change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CatalogPosition {
    /// The life of the log the offset belongs to.
    pub epoch: Uuid,
    /// The log offset of the last record applied.
    pub offset: u64,
    /// The change id of that record: reading resumes at `offset` and expects it there, so a
    /// stream created again or cut short is noticed instead of read from the wrong place.
    pub change_id: Uuid,
}

/// Meta key of the [`CatalogPosition`].
const CATALOG_POSITION: &[u8] = b"catalog_position";

/// What applying a catalog record did.
#[derive(Debug)]
pub enum Applied {
    /// Applied; the subscription as it was before (`None` for a create and for changes of
    /// anything else).
    Changed(Option<Subscription>),
    /// Refused by the current state (not found, exists, over the limit, a patch that does not
    /// apply, an idempotency key used before); the position advanced all the same, as on every
    /// replica.
    Refused(StoreError),
    /// A second copy of a change applied before (an append retried after a lost confirm):
    /// nothing changed, the position advanced.
    Repeated,
    /// At or before the applied position: applied before, nothing done.
    Seen,
}

/// The trees a catalog change writes, inside one transaction.
pub(crate) struct CatalogTx<'a> {
    pub subscriptions: &'a TransactionalTree,
    pub match_index: &'a TransactionalTree,
    pub owner_index: &'a TransactionalTree,
    pub tokens: &'a TransactionalTree,
    pub idempotency: &'a TransactionalTree,
    pub idempotency_expiry: &'a TransactionalTree,
}

/// Applies `change` at `log_time_ms` inside a transaction. A change the state refuses is
/// `Ok(Err(..))` (it wrote nothing), so that the caller can still commit the log position.
fn change_at(
    tx: &CatalogTx<'_>,
    change: &Change,
    log_time_ms: u64,
    expired: &[Vec<u8>],
) -> TxResult<Result<Option<Subscription>>> {
    idempotency::forget_expired(tx, expired, log_time_ms)?;
    match change {
        Change::AddToken { .. } | Change::RevokeToken { .. } => {
            tokens::change_in(tx.tokens, change, log_time_ms).map(|r| r.map(|()| None))
        }
        Change::Create { idempotency: Some(claim), subscription, .. } => {
            idempotency::claimed_create(tx, claim, subscription, log_time_ms, |tx| {
                change_in(tx.subscriptions, tx.match_index, tx.owner_index, change)
            })
        }
        _ => change_in(tx.subscriptions, tx.match_index, tx.owner_index, change),
    }
}

impl Store {
    /// Applies a change at log time 0 outside the log, atomically, and makes it durable; returns
    /// the subscription as it was before. For tests and bulk loads: a running replica changes
    /// its catalog only through the log ([`Store::apply_record`]).
    pub async fn apply(&self, change: Change) -> Result<Option<Subscription>> {
        let previous = self.apply_unflushed(&change)?;
        self.flush().await?;
        Ok(previous)
    }

    /// Like [`Store::apply`], without waiting for the disk (bulk loads flush once at the end).
    pub fn apply_unflushed(&self, change: &Change) -> Result<Option<Subscription>> {
        let trees = (
            &self.subscriptions,
            &self.match_index,
            &self.owner_index,
            &self.tokens,
            &self.idempotency,
            &self.idempotency_expiry,
        );
        trees.transaction(|(subscriptions, match_index, owner_index, tokens, idempotency, expiry)| {
            let tx = CatalogTx {
                subscriptions,
                match_index,
                owner_index,
                tokens,
                idempotency,
                idempotency_expiry: expiry,
            };
            change_at(&tx, change, 0, &[])
        })?
    }

    /// Applies the record at `offset` of the catalog log, and stores that position, in one
    /// transaction; not flushed (sled's background flush bounds what a crash takes, and the
    /// applier reads again from the stored position). A record at or before the stored position
    /// of the same epoch was applied before and is skipped; a change id seen before (a second
    /// copy of one append) changes nothing. Idempotency keys whose time is up at the record's log
    /// time are forgotten in the same transaction (at most a bounded number per record).
    pub fn apply_record(&self, record: &CatalogRecord, offset: u64) -> Result<Applied> {
        let position = CatalogPosition { epoch: record.epoch, offset, change_id: record.change_id };
        // Read before the transaction (sled transactions cannot scan); only the applier writes
        // these trees, so the list stays true, and each entry is checked again inside.
        let expired = idempotency::expired_before(&self.idempotency_expiry, record.log_time_ms)?;
        let trees = (
            &self.subscriptions,
            &self.match_index,
            &self.owner_index,
            &self.tokens,
            &self.idempotency,
            &self.idempotency_expiry,
            &self.meta,
            &self.catalog_changes,
        );
        trees
            .transaction(
                |(subscriptions, match_index, owner_index, tokens, idempotency, expiry, meta, changes)| {
                    let stored = match meta.get(CATALOG_POSITION)? {
                        Some(bytes) => Some(
                            decode::<CatalogPosition>(CATALOG_POSITION, &bytes)
                                .map_err(ConflictableTransactionError::Abort)?,
                        ),
                        None => None,
                    };
                    if stored.is_some_and(|p| p.epoch == record.epoch && p.offset >= offset) {
                        return Ok(Applied::Seen);
                    }
                    meta.insert(CATALOG_POSITION, encode(&position))?;
                    let id = record.change_id.as_bytes();
                    if !matches!(record.change, Change::Barrier) {
                        if changes.get(id)?.is_some() {
                            return Ok(Applied::Repeated);
                        }
                        changes.insert(id, &record.log_time_ms.to_be_bytes())?;
                    }
                    let tx = CatalogTx {
                        subscriptions,
                        match_index,
                        owner_index,
                        tokens,
                        idempotency,
                        idempotency_expiry: expiry,
                    };
                    Ok(match change_at(&tx, &record.change, record.log_time_ms, &expired)? {
                        Ok(previous) => Applied::Changed(previous),
                        Err(refusal) => Applied::Refused(refusal),
                    })
                },
            )
            .map_err(StoreError::from)
    }

    /// A digest of the whole catalog (subscriptions, tokens, idempotency keys: every key and
    /// stored record, tree by tree, in key order): replicas that applied the same log have the
    /// same digest.
    pub fn catalog_digest(&self) -> Result<String> {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        for (name, tree) in [
            ("subscriptions", &self.subscriptions),
            ("tokens", &self.tokens),
            ("idempotency", &self.idempotency),
        ] {
            hash.update((name.len() as u64).to_be_bytes());
            hash.update(name.as_bytes());
            for item in tree.iter() {
                let (key, value) = item?;
                for part in [&key[..], &value[..]] {
                    hash.update((part.len() as u64).to_be_bytes());
                    hash.update(part);
                }
            }
        }
        Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Where the catalog log has been applied up to; `None` for a store that applied none.
    pub fn catalog_position(&self) -> Result<Option<CatalogPosition>> {
        self.meta.get(CATALOG_POSITION)?.map(|bytes| decode(CATALOG_POSITION, &bytes)).transpose()
    }
}
