//! API bearer tokens: records keyed by token id, holding only the SHA-256 of the secret.
//!
//! Tree `tokens` (token id -> [`TokenRecord`]). A presented secret names its token id
//! ([`token_id_of`]), so authentication reads one record by key and compares hashes in
//! constant time. Nothing here logs or stores a secret.

use serde::{Deserialize, Serialize};
use webhookd_core::auth::{hash_token, hashes_match, token_id_of, Caller, RoleGrant};

use crate::{decode, encode, Result, Store, StoreError};

const TREE: &str = "tokens";

/// A stored token: never the secret, only its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// `tok_` + 16 lowercase alphanumerics (the store key).
    pub id: String,
    /// SHA-256 of the secret (lowercase hex in the stored JSON).
    #[serde(with = "hex32")]
    pub hash: [u8; 32],
    /// The user the token acts as (OBP `created_by_user_id`).
    pub user_id: String,
    /// The merchant the token acts for on the Rabo routes, if any.
    pub merchant_id: Option<String>,
    /// What the token may do.
    pub roles: Vec<RoleGrant>,
    /// Creation time, unix milliseconds.
    pub created_at_ms: u64,
    /// Revocation time, unix milliseconds; a revoked token authenticates nobody.
    pub revoked_at_ms: Option<u64>,
    /// A free-text note for operators (who it was issued to, why).
    pub note: Option<String>,
}

impl TokenRecord {
    /// Whether the token has been revoked.
    pub fn is_revoked(&self) -> bool {
        self.revoked_at_ms.is_some()
    }

    /// The caller this token authenticates as.
    pub fn caller(&self) -> Caller {
        Caller {
            token_id: self.id.clone(),
            user_id: self.user_id.clone(),
            merchant_id: self.merchant_id.clone(),
            roles: self.roles.clone(),
        }
    }
}

impl Store {
    // The tree is looked up by name (a read lock and a map lookup once it exists) rather than
    // held in `Store`, so tokens need no change to how the store is opened.
    fn token_tree(&self) -> Result<sled::Tree> {
        Ok(self.db.open_tree(TREE)?)
    }

    /// Creates or replaces a token record (by its id) and makes it durable.
    pub async fn put_token(&self, record: TokenRecord) -> Result<()> {
        self.token_tree()?.insert(record.id.as_bytes(), encode(&record))?;
        self.flush().await
    }

    /// One token record by id.
    pub fn token(&self, id: &str) -> Result<Option<TokenRecord>> {
        self.token_tree()?.get(id.as_bytes())?.map(|v| decode(id.as_bytes(), &v)).transpose()
    }

    /// All token records (revoked ones included), in id order.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>> {
        self.token_tree()?
            .iter()
            .map(|item| {
                let (k, v) = item?;
                decode(&k, &v)
            })
            .collect()
    }

    /// Revokes a token and makes that durable; returns the record as now stored.
    ///
    /// Revoking a revoked token changes nothing (it keeps its first revocation time).
    /// [`StoreError::NotFound`] if there is no token with this id.
    pub async fn revoke_token(&self, id: &str, now_ms: u64) -> Result<TokenRecord> {
        let key = id.as_bytes();
        let record = self.token_tree()?.transaction(|tree| {
            let Some(bytes) = tree.get(key)? else {
                return sled::transaction::abort(StoreError::NotFound(format!("token {id}")));
            };
            let mut record: TokenRecord =
                decode(key, &bytes).map_err(sled::transaction::ConflictableTransactionError::Abort)?;
            if record.revoked_at_ms.is_none() {
                record.revoked_at_ms = Some(now_ms);
                tree.insert(key, encode(&record))?;
            }
            Ok(record)
        })?;
        self.flush().await?;
        Ok(record)
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

/// `[u8; 32]` as 64 lowercase hex digits.
mod hex32 {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    const DIGITS: &[u8; 16] = b"0123456789abcdef";

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], serializer: S) -> Result<S::Ok, S::Error> {
        let text: String = bytes
            .iter()
            .flat_map(|b| [DIGITS[usize::from(b >> 4)] as char, DIGITS[usize::from(b & 0xf)] as char])
            .collect();
        serializer.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(deserializer)?;
        let digits = text.as_bytes();
        if digits.len() != 64 {
            return Err(D::Error::custom("a token hash is 64 hex digits"));
        }
        let mut out = [0u8; 32];
        for (slot, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            let (Some(high), Some(low)) = (nibble(pair[0]), nibble(pair[1])) else {
                return Err(D::Error::custom("a token hash is 64 hex digits"));
            };
            *slot = (high << 4) | low;
        }
        Ok(out)
    }

    fn nibble(digit: u8) -> Option<u8> {
        match digit {
            b'0'..=b'9' => Some(digit - b'0'),
            b'a'..=b'f' => Some(digit - b'a' + 10),
            b'A'..=b'F' => Some(digit - b'A' + 10),
            _ => None,
        }
    }
}
