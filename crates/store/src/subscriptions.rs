//! Subscriptions and their match indexes: the subscription part of a catalog change, index-only
//! matching.

use sled::transaction::{ConflictableTransactionError, TransactionalTree};
pub use webhookd_core::catalog::Change;
use webhookd_core::catalog::Owner;
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

pub(crate) type TxResult<T> = std::result::Result<T, ConflictableTransactionError<StoreError>>;

impl Store {
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
pub(crate) fn change_in(
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
        Change::Create { subscription, max_per_owner, .. } => {
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
        Change::AddToken { .. } | Change::RevokeToken { .. } | Change::SnapshotPart(_) | Change::Barrier => {
            return Ok(Ok(None))
        }
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
