//! Idempotency keys of creates, as the catalog applies them.
//!
//! A create that carries a key ([`IdempotencyClaim`]) creates only on the key's first use in its
//! scope, and the outcome is kept with the key. A repeat of the same request while the key is
//! kept is refused with that first outcome ([`StoreError::KeyUsed`]), so every replica answers it
//! alike and nothing is created twice; another request under the key is refused
//! ([`StoreError::KeyMismatch`]). A key is kept for its `ttl_ms` of log time from its first use,
//! then forgotten by a later record's apply: time here is the records' log time, never a local
//! clock, so all replicas forget a key at the same record.
//!
//! Trees: `idempotency` (scope + key -> [`KeyRecord`]), `idempotency_expiry` (expiry time + scope
//! + key -> ()).

use sled::transaction::ConflictableTransactionError;
use webhookd_core::catalog::{FirstOutcome, IdempotencyClaim};
use webhookd_core::subscription::Subscription;

use crate::catalog::CatalogTx;
use crate::keys::push_segment;
use crate::subscriptions::TxResult;
use crate::{decode, encode, Result, Store, StoreError};

/// The most expired keys one record's apply forgets (the rest go with the next records), so
/// that one apply stays small after a long quiet time.
const FORGET_PER_RECORD: usize = 256;

/// What is kept of a used key.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// SHA-256 of the first request's canonical form, lowercase hex.
    pub request_sha256: String,
    /// Log time after which the key is forgotten, unix milliseconds.
    pub expires_at_ms: u64,
    /// What the first request did.
    pub first: FirstOutcome,
}

fn record_key(scope: &str, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(scope.len() + key.len() + 4);
    push_segment(&mut out, scope.as_bytes());
    push_segment(&mut out, key.as_bytes());
    out
}

fn expiry_key(expires_at_ms: u64, record_key: &[u8]) -> Vec<u8> {
    let mut out = expires_at_ms.to_be_bytes().to_vec();
    out.extend_from_slice(record_key);
    out
}

/// The expiry entries due at `log_time_ms` (at most [`FORGET_PER_RECORD`]), read outside the
/// transaction that removes them.
pub(crate) fn expired_before(expiry: &sled::Tree, log_time_ms: u64) -> Result<Vec<Vec<u8>>> {
    // Entries are the expiry time then the key: every entry due at `log_time_ms` sorts before
    // the next millisecond.
    expiry
        .range(..log_time_ms.saturating_add(1).to_be_bytes().to_vec())
        .keys()
        .take(FORGET_PER_RECORD)
        .map(|k| Ok(k?.to_vec()))
        .collect()
}

/// Forgets the keys of `expired` (entries of `idempotency_expiry`) whose time is up at
/// `log_time_ms`.
pub(crate) fn forget_expired(tx: &CatalogTx<'_>, expired: &[Vec<u8>], log_time_ms: u64) -> TxResult<()> {
    for entry in expired {
        let Some(at) = entry.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes) else {
            continue;
        };
        if at > log_time_ms || tx.idempotency_expiry.remove(entry.as_slice())?.is_none() {
            continue;
        }
        let key = &entry[8..];
        if let Some(bytes) = tx.idempotency.get(key)? {
            let record: KeyRecord = decode(key, &bytes).map_err(ConflictableTransactionError::Abort)?;
            if record.expires_at_ms <= log_time_ms {
                tx.idempotency.remove(key)?;
            }
        }
    }
    Ok(())
}

/// Applies a create that carries `claim`: `create` runs only if the key is free (or its time is
/// up), and its outcome is kept with the key.
pub(crate) fn claimed_create(
    tx: &CatalogTx<'_>,
    claim: &IdempotencyClaim,
    subscription: &Subscription,
    log_time_ms: u64,
    create: impl FnOnce(&CatalogTx<'_>) -> TxResult<Result<Option<Subscription>>>,
) -> TxResult<Result<Option<Subscription>>> {
    let key = record_key(&claim.scope, &claim.key);
    if let Some(bytes) = tx.idempotency.get(&key)? {
        let record: KeyRecord = decode(&key, &bytes).map_err(ConflictableTransactionError::Abort)?;
        if record.expires_at_ms > log_time_ms {
            return Ok(Err(if record.request_sha256 == claim.request_sha256 {
                StoreError::KeyUsed(Box::new(record.first))
            } else {
                StoreError::KeyMismatch
            }));
        }
        tx.idempotency_expiry.remove(expiry_key(record.expires_at_ms, &key))?;
    }
    let outcome = create(tx)?;
    let first = match &outcome {
        Ok(_) => FirstOutcome::Created { subscription: subscription.clone() },
        Err(StoreError::LimitReached { limit }) => FirstOutcome::LimitReached { limit: *limit },
        // Nothing the client could be answered with again (an id taken): the key stays free.
        Err(_) => return Ok(outcome),
    };
    let record = KeyRecord {
        request_sha256: claim.request_sha256.clone(),
        expires_at_ms: log_time_ms.saturating_add(claim.ttl_ms),
        first,
    };
    tx.idempotency.insert(key.as_slice(), encode(&record))?;
    tx.idempotency_expiry.insert(expiry_key(record.expires_at_ms, &key), &[])?;
    Ok(outcome)
}

impl Store {
    /// The record of `key` in `scope`, if it is kept (its time may be up at the log's next
    /// record: callers compare [`KeyRecord::expires_at_ms`] with their clock).
    pub fn idempotency_key(&self, scope: &str, key: &str) -> Result<Option<KeyRecord>> {
        let id = record_key(scope, key);
        self.idempotency.get(&id)?.map(|bytes| decode(&id, &bytes)).transpose()
    }
}
