//! Subscriptions and their match indexes: one change function, index-only matching.

use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::Transactional;
use webhookd_core::matching::MatchKey;
use webhookd_core::subscription::{Subscription, Target};

use crate::keys::{match_entry, match_prefix};
use crate::{decode, encode, Result, Store, StoreError};

/// A change to the subscriptions. Every change goes through [`Store::apply`], so the same
/// change could later arrive from a replicated log.
#[derive(Clone, Debug)]
pub enum Change {
    /// Create or replace a subscription (by its id).
    Put(Subscription),
    /// Delete a subscription by id.
    Delete(String),
}

impl Change {
    fn id(&self) -> String {
        match self {
            Change::Put(s) => s.id(),
            Change::Delete(id) => id.clone(),
        }
    }
}

type TxResult<T> = std::result::Result<T, ConflictableTransactionError<StoreError>>;

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
        let id = change.id();
        let previous = (&self.subscriptions, &self.match_index).transaction(|(subs, index)| {
            let previous = read_subscription(subs, &id)?;
            if let Some(old) = &previous {
                for key in old.match_keys() {
                    index.remove(match_entry(&key, &id))?;
                }
            }
            match change {
                Change::Put(new) => {
                    subs.insert(id.as_bytes(), encode(new))?;
                    let target = encode(&new.target());
                    for key in new.match_keys() {
                        index.insert(match_entry(&key, &id), target.clone())?;
                    }
                }
                Change::Delete(_) => {
                    if previous.is_none() {
                        return Err(ConflictableTransactionError::Abort(StoreError::NotFound(id.clone())));
                    }
                    subs.remove(id.as_bytes())?;
                }
            }
            Ok(previous)
        })?;
        Ok(previous)
    }

    /// One subscription by id.
    pub fn subscription(&self, id: &str) -> Result<Option<Subscription>> {
        self.subscriptions.get(id.as_bytes())?.map(|v| decode(id.as_bytes(), &v)).transpose()
    }

    /// All subscriptions, in id order.
    pub fn subscriptions(&self) -> impl Iterator<Item = Result<Subscription>> + '_ {
        self.subscriptions.iter().map(|item| item.map_err(StoreError::from).and_then(|(k, v)| decode(&k, &v)))
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
