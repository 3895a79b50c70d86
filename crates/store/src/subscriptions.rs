//! Subscriptions and their match indexes: one change function, index-only matching.

use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::Transactional;
use uuid::Uuid;
pub use webhookd_core::catalog::Change;
use webhookd_core::catalog::{CatalogRecord, Owner};
use webhookd_core::matching::MatchKey;
use webhookd_core::subscription::{Subscription, Target};

use crate::keys::{match_entry, match_prefix, push_segment};
use crate::{decode, encode, Result, Store, StoreError};

/// The owner-index entry of a subscription: its bank (OBP) or merchant (Rabo), then creation
/// time, so listings come out in creation order.
fn owner_entry(s: &Subscription) -> Vec<u8> {
    let mut key = owner_prefix(s);
    key.extend_from_slice(&created_at_ms(s).to_be_bytes());
    key.extend_from_slice(s.id().as_bytes());
    key
}

fn owner_prefix(s: &Subscription) -> Vec<u8> {
    match s {
        Subscription::Obp(w) => bank_prefix(&w.bank_id),
        Subscription::Rabo(r) => merchant_prefix(&r.merchant_id),
    }
}

fn bank_prefix(bank_id: &str) -> Vec<u8> {
    let mut key = vec![b'b'];
    push_segment(&mut key, bank_id.as_bytes());
    key
}

fn merchant_prefix(merchant_id: &str) -> Vec<u8> {
    let mut key = vec![b'm'];
    push_segment(&mut key, merchant_id.as_bytes());
    key
}

/// The counter of an owner's subscriptions (kept in the same tree, prefix `c`).
fn owner_count_key(s: &Subscription) -> Vec<u8> {
    let mut key = vec![b'c'];
    key.extend_from_slice(&owner_prefix(s));
    key
}

fn created_at_ms(s: &Subscription) -> u64 {
    match s {
        Subscription::Obp(w) => w.created_at_ms,
        Subscription::Rabo(r) => r.created_at_ms,
    }
}

/// The counter of subscriptions of one API in one state (`active` or `inactive`).
fn stats_key(s: &Subscription) -> Vec<u8> {
    let state = if s.is_active() { "active" } else { "inactive" };
    format!("s/{}/{state}", s.api().as_str()).into_bytes()
}

fn add(tree: &TransactionalTree, key: &[u8], delta: i64) -> TxResult<()> {
    let current =
        tree.get(key)?.and_then(|v| v.as_ref().try_into().ok()).map(i64::from_be_bytes).unwrap_or(0);
    tree.insert(key, &(current + delta).max(0).to_be_bytes())?;
    Ok(())
}

fn read_count(tree: &TransactionalTree, key: &[u8]) -> TxResult<u32> {
    Ok(tree.get(key)?.and_then(|v| v.as_ref().try_into().ok()).map(u32::from_be_bytes).unwrap_or(0))
}

type TxResult<T> = std::result::Result<T, ConflictableTransactionError<StoreError>>;

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
    /// Applied; the subscription as it was before.
    Changed(Option<Subscription>),
    /// Refused by the current state (not found, exists, over the limit, a patch that does not
    /// apply); the position advanced all the same, as on every replica.
    Refused(StoreError),
    /// A second copy of a change applied before (an append retried after a lost confirm):
    /// nothing changed, the position advanced.
    Repeated,
    /// At or before the applied position: applied before, nothing done.
    Seen,
}

impl Store {
    /// Applies a change atomically (subscription and indexes) and makes it durable; returns the
    /// subscription as it was before.
    pub async fn apply(&self, change: Change) -> Result<Option<Subscription>> {
        let previous = self.apply_unflushed(&change)?;
        self.flush().await?;
        Ok(previous)
    }

    /// Applies a change atomically without waiting for the disk (bulk loads flush once at the end).
    pub fn apply_unflushed(&self, change: &Change) -> Result<Option<Subscription>> {
        let trees = (&self.subscriptions, &self.match_index, &self.owner_index);
        trees.transaction(|(subs, index, owners)| change_in(subs, index, owners, change))?
    }

    /// Applies the record at `offset` of the catalog log, and stores that position, in one
    /// transaction; not flushed (sled's background flush bounds what a crash takes, and the
    /// applier reads again from the stored position). A record at or before the stored position
    /// of the same epoch was applied before and is skipped; a change id seen before (a second
    /// copy of one append) changes nothing.
    pub fn apply_record(&self, record: &CatalogRecord, offset: u64) -> Result<Applied> {
        let position = CatalogPosition { epoch: record.epoch, offset, change_id: record.change_id };
        let trees =
            (&self.subscriptions, &self.match_index, &self.owner_index, &self.meta, &self.catalog_changes);
        trees
            .transaction(|(subs, index, owners, meta, changes)| {
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
                Ok(match change_in(subs, index, owners, &record.change)? {
                    Ok(previous) => Applied::Changed(previous),
                    Err(refusal) => Applied::Refused(refusal),
                })
            })
            .map_err(StoreError::from)
    }

    /// A digest of every subscription (ids and stored records, in id order): replicas that applied
    /// the same log have the same digest.
    pub fn catalog_digest(&self) -> Result<String> {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        for item in self.subscriptions.iter() {
            let (key, value) = item?;
            for part in [&key[..], &value[..]] {
                hash.update((part.len() as u64).to_be_bytes());
                hash.update(part);
            }
        }
        Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Where the catalog log has been applied up to; `None` for a store that applied none.
    pub fn catalog_position(&self) -> Result<Option<CatalogPosition>> {
        self.meta.get(CATALOG_POSITION)?.map(|bytes| decode(CATALOG_POSITION, &bytes)).transpose()
    }

    /// One subscription by id.
    pub fn subscription(&self, id: &str) -> Result<Option<Subscription>> {
        self.subscriptions.get(id.as_bytes())?.map(|v| decode(id.as_bytes(), &v)).transpose()
    }

    /// All subscriptions, in id order.
    pub fn subscriptions(&self) -> impl Iterator<Item = Result<Subscription>> + '_ {
        self.subscriptions.iter().map(|item| item.map_err(StoreError::from).and_then(|(k, v)| decode(&k, &v)))
    }

    /// How many subscriptions there are per (api, state): `[("obp", "active", n), ...]`.
    pub fn subscription_counts(&self) -> Result<Vec<(String, String, u64)>> {
        let mut out = Vec::new();
        for item in self.owner_index.scan_prefix(b"s/") {
            let (key, value) = item?;
            let text = String::from_utf8_lossy(&key[2..]).into_owned();
            let Some((api, state)) = text.split_once('/') else { continue };
            let n = value.as_ref().try_into().map(i64::from_be_bytes).unwrap_or(0).max(0) as u64;
            out.push((api.to_string(), state.to_string(), n));
        }
        Ok(out)
    }

    /// The subscriptions of a bank (OBP), in creation order.
    pub fn subscriptions_of_bank(&self, bank_id: &str) -> Result<Vec<Subscription>> {
        self.owned(bank_prefix(bank_id))
    }

    /// The subscriptions of a merchant (Rabo), in creation order.
    pub fn subscriptions_of_merchant(&self, merchant_id: &str) -> Result<Vec<Subscription>> {
        self.owned(merchant_prefix(merchant_id))
    }

    fn owned(&self, prefix: Vec<u8>) -> Result<Vec<Subscription>> {
        let mut out = Vec::new();
        for item in self.owner_index.scan_prefix(&prefix) {
            let (key, _) = item?;
            let Some(id) = key.get(prefix.len() + 8..).and_then(|b| std::str::from_utf8(b).ok()) else {
                continue;
            };
            if let Some(s) = self.subscription(id)? {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// The active subscriptions under `key`: a prefix scan of the index, never a scan of
    /// unrelated subscriptions.
    pub fn targets(&self, key: &MatchKey) -> Result<Vec<Target>> {
        self.match_index
            .scan_prefix(match_prefix(key))
            .map(|item| {
                let (k, v) = item?;
                decode(&k, &v)
            })
            .collect()
    }
}

fn read_subscription(tree: &TransactionalTree, id: &str) -> TxResult<Option<Subscription>> {
    match tree.get(id.as_bytes())? {
        None => Ok(None),
        Some(bytes) => decode(id.as_bytes(), &bytes).map(Some).map_err(ConflictableTransactionError::Abort),
    }
}

/// Applies `change` inside a transaction: the subscription, its match entries, its owner entry
/// and the counters change together. A change the current state refuses is `Ok(Err(..))` (it
/// wrote nothing), so that a caller can still commit other writes (the log position).
fn change_in(
    subs: &TransactionalTree,
    index: &TransactionalTree,
    owners: &TransactionalTree,
    change: &Change,
) -> TxResult<Result<Option<Subscription>>> {
    let Some(id) = change.subscription_id() else {
        return Ok(Ok(None));
    };
    let previous = read_subscription(subs, &id)?;
    let wrong_owner = |owner: &Option<Owner>| match (owner, &previous) {
        (Some(owner), Some(s)) => Owner::of(s) != *owner,
        _ => false,
    };
    let next = match change {
        Change::Create { subscription, max_per_owner } => {
            if previous.is_some() {
                return Ok(Err(StoreError::Exists(id)));
            }
            let count = read_count(owners, &owner_count_key(subscription))?;
            if let Some(limit) = max_per_owner.filter(|limit| count >= *limit) {
                return Ok(Err(StoreError::LimitReached { limit }));
            }
            Some(subscription.clone())
        }
        Change::Put { subscription } => Some(subscription.clone()),
        Change::Patch { owner, .. } | Change::Delete { owner, .. } if wrong_owner(owner) => {
            return Ok(Err(StoreError::NotFound(id)));
        }
        Change::Barrier => return Ok(Ok(None)),
        Change::Patch { patch, .. } => match &previous {
            None => return Ok(Err(StoreError::NotFound(id))),
            Some(old) => match patch.applied_to(old) {
                Ok(new) => Some(new),
                Err(e) => return Ok(Err(StoreError::Conflict(e.to_string()))),
            },
        },
        Change::Delete { .. } => {
            if previous.is_none() {
                return Ok(Err(StoreError::NotFound(id)));
            }
            None
        }
    };
    if let Some(old) = &previous {
        for key in old.match_keys() {
            index.remove(match_entry(&key, &id))?;
        }
        owners.remove(owner_entry(old))?;
        let count_key = owner_count_key(old);
        let count = read_count(owners, &count_key)?;
        owners.insert(count_key, &count.saturating_sub(1).to_be_bytes())?;
        add(owners, &stats_key(old), -1)?;
    }
    match next {
        Some(new) => {
            subs.insert(id.as_bytes(), encode(&new))?;
            let target = encode(&new.target());
            for key in new.match_keys() {
                index.insert(match_entry(&key, &id), target.clone())?;
            }
            owners.insert(owner_entry(&new), &[])?;
            let count_key = owner_count_key(&new);
            let count = read_count(owners, &count_key)?;
            owners.insert(count_key, &(count + 1).to_be_bytes())?;
            add(owners, &stats_key(&new), 1)?;
        }
        None => {
            subs.remove(id.as_bytes())?;
        }
    }
    Ok(Ok(previous))
}
