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
    /// How many catalog changes (records other than barriers and snapshot parts) the log held
    /// up to here: what the snapshot rule counts.
    #[serde(default)]
    pub changes: u64,
}

/// The first bytes of a catalog dump (and its format's version).
const SNAPSHOT_MAGIC: &[u8] = b"webhookd-catalog-1\n";

/// Meta key of the [`CatalogPosition`].
const CATALOG_POSITION: &[u8] = b"catalog_position";

/// Meta key of the [`LastSnapshot`].
const LAST_SNAPSHOT: &[u8] = b"catalog_last_snapshot";

/// The newest snapshot whose last part this replica applied (it may lack a part: parts are not
/// checked here, only where a new replica loads one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LastSnapshot {
    /// The offset of the last record it holds.
    pub of_offset: u64,
    /// Its id.
    pub id: Uuid,
    /// The changes the log held up to that record ([`CatalogPosition::changes`]).
    pub changes: u64,
    /// The log time of its last part.
    pub log_time_ms: u64,
}

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
        Change::SnapshotPart(_) => Ok(Ok(None)),
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
    /// was applied before and is skipped; a record stamped with another life of the log is
    /// refused; a change id seen before (a second copy of one append) changes nothing. Idempotency keys whose time is up at the record's log
    /// time are forgotten in the same transaction (at most a bounded number per record).
    pub fn apply_record(&self, record: &CatalogRecord, offset: u64) -> Result<Applied> {
        // Read before the transaction (sled transactions cannot scan); only the applier writes
        // these trees, so the list stays true, and each entry is checked again inside.
        let expired = idempotency::expired_before(&self.idempotency_expiry, record.log_time_ms)?;
        if matches!(record.change, Change::Barrier) && expired.is_empty() {
            return self.apply_barrier(record, offset);
        }
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
                    let Some(position) = next_position(stored, record, offset) else {
                        return Ok(Applied::Seen);
                    };
                    meta.insert(CATALOG_POSITION, encode(&position))?;
                    if let Some(stale) = stale_epoch(record, &position) {
                        return Ok(Applied::Refused(stale));
                    }
                    let epoch = position.epoch;
                    if let Change::SnapshotPart(part) = &record.change {
                        if part.part + 1 == part.parts && part.epoch == epoch {
                            let last = LastSnapshot {
                                of_offset: part.of_offset,
                                id: part.id,
                                changes: part.changes,
                                log_time_ms: record.log_time_ms,
                            };
                            meta.insert(LAST_SNAPSHOT, encode(&last))?;
                        }
                    }
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

    /// Applies a barrier that has no idempotency key to forget: it moves the position only. One
    /// read and one write instead of a transaction over every catalog tree, for the record
    /// appended before every batch of events; the position is written by the applier alone.
    fn apply_barrier(&self, record: &CatalogRecord, offset: u64) -> Result<Applied> {
        let Some(position) = next_position(self.catalog_position()?, record, offset) else {
            return Ok(Applied::Seen);
        };
        self.meta.insert(CATALOG_POSITION, encode(&position))?;
        if let Some(stale) = stale_epoch(record, &position) {
            return Ok(Applied::Refused(stale));
        }
        Ok(Applied::Changed(None))
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

    /// The newest snapshot this replica has seen complete in the log.
    pub fn last_snapshot(&self) -> Result<Option<LastSnapshot>> {
        self.meta.get(LAST_SNAPSHOT)?.map(|bytes| decode(LAST_SNAPSHOT, &bytes)).transpose()
    }

    fn catalog_trees(&self) -> [&sled::Tree; 7] {
        [
            &self.subscriptions,
            &self.match_index,
            &self.owner_index,
            &self.tokens,
            &self.idempotency,
            &self.idempotency_expiry,
            &self.catalog_changes,
        ]
    }

    /// The whole catalog as bytes (every key and value of its trees, tree by tree, in key
    /// order): what a snapshot carries. Consistent when taken by the applier between two records
    /// (the applier is the only writer of these trees).
    pub fn catalog_dump(&self) -> Result<Vec<u8>> {
        let mut out = SNAPSHOT_MAGIC.to_vec();
        for (index, tree) in self.catalog_trees().into_iter().enumerate() {
            for item in tree.iter() {
                let (key, value) = item?;
                out.push(index as u8);
                for part in [&key[..], &value[..]] {
                    out.extend_from_slice(&(part.len() as u32).to_be_bytes());
                    out.extend_from_slice(part);
                }
            }
        }
        Ok(out)
    }

    /// Replaces the catalog with a dump ([`Store::catalog_dump`]) taken at `position`, and makes
    /// it durable. The position is written last: a crash midway leaves a store without one,
    /// which is loaded again from scratch. A dump that does not parse changes nothing.
    pub async fn catalog_load(&self, dump: &[u8], position: CatalogPosition) -> Result<()> {
        let corrupt =
            |reason: &str| StoreError::Corrupt { key: "catalog snapshot".into(), reason: reason.into() };
        let body = dump.strip_prefix(SNAPSHOT_MAGIC).ok_or_else(|| corrupt("not a catalog snapshot"))?;
        // Parsed whole before anything is written.
        let mut entries: Vec<(usize, &[u8], &[u8])> = Vec::new();
        let mut rest = body;
        fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (head, tail) = rest.split_at_checked(n)?;
            *rest = tail;
            Some(head)
        }
        while !rest.is_empty() {
            let index = usize::from(take(&mut rest, 1).ok_or_else(|| corrupt("cut short"))?[0]);
            if index >= 7 {
                return Err(corrupt("unknown tree"));
            }
            let mut parts = [&[][..]; 2];
            for slot in &mut parts {
                let len = take(&mut rest, 4).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes);
                let len = len.ok_or_else(|| corrupt("cut short"))? as usize;
                *slot = take(&mut rest, len).ok_or_else(|| corrupt("cut short"))?;
            }
            entries.push((index, parts[0], parts[1]));
        }
        self.meta.remove(CATALOG_POSITION)?;
        self.meta.remove(LAST_SNAPSHOT)?;
        let trees = self.catalog_trees();
        for tree in trees {
            tree.clear()?;
        }
        for (index, key, value) in entries {
            trees[index].insert(key, value)?;
        }
        self.flush().await?;
        self.meta.insert(CATALOG_POSITION, encode(&position))?;
        self.flush().await
    }

    /// Where the catalog log has been applied up to; `None` for a store that applied none.
    pub fn catalog_position(&self) -> Result<Option<CatalogPosition>> {
        self.meta.get(CATALOG_POSITION)?.map(|bytes| decode(CATALOG_POSITION, &bytes)).transpose()
    }
}
/// The position after applying `record` at `offset` over `stored`; `None` when that offset
/// was applied already.
fn next_position(
    stored: Option<CatalogPosition>,
    record: &CatalogRecord,
    offset: u64,
) -> Option<CatalogPosition> {
    if stored.is_some_and(|p| p.offset >= offset) {
        return None;
    }
    // The life of the log: named by the change id of its record at offset 0.
    let epoch = match stored {
        Some(p) => p.epoch,
        None if offset == 0 => record.change_id,
        None => record.epoch,
    };
    let counted = !matches!(record.change, Change::Barrier | Change::SnapshotPart(_));
    let changes = stored.map_or(0, |p| p.changes) + u64::from(counted);
    Some(CatalogPosition { epoch, offset, change_id: record.change_id, changes })
}

/// A record its proposer stamped with another life of the log (one deleted and created again
/// under it) is not applied; a record stamped with none (a proposer that has applied nothing
/// yet) is.
fn stale_epoch(record: &CatalogRecord, position: &CatalogPosition) -> Option<StoreError> {
    (position.offset != 0 && !record.epoch.is_nil() && record.epoch != position.epoch)
        .then(|| StoreError::StaleEpoch { record: record.epoch, log: position.epoch })
}
