//! API bearer tokens: records keyed by token id, holding only the SHA-256 of the secret.
//!
//! Tree `tokens` (token id -> [`TokenRecord`]), changed only by catalog changes
//! ([`Change::AddToken`], [`Change::RevokeToken`]), so every replica holds the same tokens.
//! A presented secret names its token id ([`token_id_of`]), so authentication reads one record by key and compares hashes in
//! constant time. Nothing here logs or stores a secret.

use sled::transaction::{ConflictableTransactionError, TransactionalTree};
pub use webhookd_core::auth::TokenRecord;
use webhookd_core::auth::{hash_token, hashes_match, token_id_of, Caller};
use webhookd_core::catalog::Change;

use crate::subscriptions::TxResult;
use crate::{decode, encode, Result, Store, StoreError};

/// Applies a token change at `log_time_ms` inside the catalog transaction; a refusal is
/// `Ok(Err(..))` and writes nothing.
pub(crate) fn change_in(tree: &TransactionalTree, change: &Change, log_time_ms: u64) -> TxResult<Result<()>> {
    match change {
        Change::AddToken { token } => {
            if tree.get(token.id.as_bytes())?.is_some() {
                return Ok(Err(StoreError::Exists(format!("token {}", token.id))));
            }
            tree.insert(token.id.as_bytes(), encode(token))?;
        }
        Change::RevokeToken { id } => {
            let key = id.as_bytes();
            let Some(bytes) = tree.get(key)? else {
                return Ok(Err(StoreError::NotFound(format!("token {id}"))));
            };
            let mut record: TokenRecord = decode(key, &bytes).map_err(ConflictableTransactionError::Abort)?;
            if record.revoked_at_ms.is_none() {
                record.revoked_at_ms = Some(log_time_ms);
                tree.insert(key, encode(&record))?;
            }
        }
        _ => {}
    }
    Ok(Ok(()))
}

impl Store {
    /// One token record by id.
    pub fn token(&self, id: &str) -> Result<Option<TokenRecord>> {
        self.tokens.get(id.as_bytes())?.map(|v| decode(id.as_bytes(), &v)).transpose()
    }

    /// All token records (revoked ones included), in id order.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>> {
        self.tokens
            .iter()
            .map(|item| {
                let (k, v) = item?;
                decode(&k, &v)
            })
            .collect()
    }

    /// The caller a presented bearer secret authenticates as.
    ///
    /// `None` when the secret is malformed, names no stored token, does not hash to that
    /// token's hash (compared in constant time), or the token is revoked.
    pub fn authenticate(&self, secret: &str) -> Result<Option<Caller>> {
        let Some(id) = token_id_of(secret) else {
            return Ok(None);
        };
        let Some(record) = self.token(&id)? else {
            return Ok(None);
        };
        let genuine = hashes_match(&record.hash, &hash_token(secret));
        Ok((genuine && record.id == id && !record.is_revoked()).then(|| record.caller()))
    }
}
