//! Bearer tokens and role grants: minting, hashing, constant-time comparison, role checks.
//!
//! A token is `whd_` + the 16-character tail of its public id + `_` + 32 random base62
//! characters (about 190 bits). Its id (`tok_` + the same tail) can be read off the token, so
//! the store finds the one candidate record by key and compares SHA-256 hashes in constant time.
//! Only the hash is ever stored; the secret is shown once, when minted. No type here prints a
//! secret: [`MintedToken`]'s `Debug` redacts it and [`Caller`] holds none.
//!
//! A role grant is `Role@bank_id`, or `Role@*` for every bank. The OBP webhook roles are
//! granted per bank, so they need the `@`; any other role (such as
//! [`roles::CAN_MANAGE_DELIVERIES`]) written without `@` applies to every bank.

use std::fmt;
use std::str::FromStr;

use rand::rngs::OsRng;
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Known role names.
pub mod roles {
    /// OBP: create account webhooks at a bank.
    pub const CAN_CREATE_WEBHOOK: &str = "CanCreateWebhook";
    /// OBP: enable or disable account webhooks at a bank.
    pub const CAN_UPDATE_WEBHOOK: &str = "CanUpdateWebhook";
    /// OBP: list account webhooks at a bank.
    pub const CAN_GET_WEBHOOKS: &str = "CanGetWebhooks";
    /// Admin API: inspect and replay deliveries.
    pub const CAN_MANAGE_DELIVERIES: &str = "CanManageDeliveries";

    /// The roles that are granted per bank: a grant of them must name a bank or `*`.
    pub const BANK_SCOPED: &[&str] = &[CAN_CREATE_WEBHOOK, CAN_UPDATE_WEBHOOK, CAN_GET_WEBHOOKS];

    /// Whether a grant of `role` must say which bank (`Role@bank` or `Role@*`).
    pub fn is_bank_scoped(role: &str) -> bool {
        BANK_SCOPED.contains(&role)
    }
}

/// Why a role grant was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// The role name is not a letter followed by letters and digits.
    #[error("role grant {grant:?}: the role must be a letter followed by letters and digits")]
    InvalidRole {
        /// The grant as written.
        grant: String,
    },
    /// The bank after `@` is neither `*` nor a bank id.
    #[error("role grant {grant:?}: the bank must be `*` or a bank id of letters, digits, `.`, `-` and `_`")]
    InvalidBank {
        /// The grant as written.
        grant: String,
    },
    /// A bank-scoped role was written without `@`.
    #[error("role {role} is granted per bank: write {role}@BANK_ID, or {role}@* for every bank")]
    BankRequired {
        /// The role name.
        role: String,
    },
}

/// Which banks a role grant covers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BankScope {
    /// Every bank (`@*`).
    All,
    /// One bank, by its OBP bank id.
    Bank(String),
}

/// A role grant: a role at one bank, or at every bank (`@*`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RoleGrant {
    /// The role name (see [`roles`]).
    pub role: String,
    /// The banks it covers.
    pub bank: BankScope,
}

impl RoleGrant {
    /// Parses `Role@bank_id`, `Role@*`, or (for roles that are not bank-scoped) `Role`.
    pub fn parse(text: &str) -> Result<RoleGrant, AuthError> {
        let (role, bank) = match text.split_once('@') {
            Some((role, bank)) => (role, Some(bank)),
            None => (text, None),
        };
        if !is_role_name(role) {
            return Err(AuthError::InvalidRole { grant: text.to_owned() });
        }
        let bank = match bank {
            Some("*") => BankScope::All,
            Some(bank) if is_bank_id(bank) => BankScope::Bank(bank.to_owned()),
            Some(_) => return Err(AuthError::InvalidBank { grant: text.to_owned() }),
            None if roles::is_bank_scoped(role) => {
                return Err(AuthError::BankRequired { role: role.to_owned() })
            }
            None => BankScope::All,
        };
        Ok(RoleGrant { role: role.to_owned(), bank })
    }

    /// Whether this grant permits `role` at `bank` (exact, case-sensitive names).
    pub fn allows(&self, role: &str, bank: &str) -> bool {
        self.role == role
            && match &self.bank {
                BankScope::All => true,
                BankScope::Bank(granted) => granted == bank,
            }
    }
}

impl fmt::Display for RoleGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.bank {
            BankScope::All => write!(f, "{}@*", self.role),
            BankScope::Bank(bank) => write!(f, "{}@{bank}", self.role),
        }
    }
}

impl FromStr for RoleGrant {
    type Err = AuthError;

    fn from_str(text: &str) -> Result<RoleGrant, AuthError> {
        RoleGrant::parse(text)
    }
}

/// `^[A-Za-z][A-Za-z0-9]*$`
fn is_role_name(text: &str) -> bool {
    let mut bytes = text.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic()) && bytes.all(|b| b.is_ascii_alphanumeric())
}

/// An OBP bank id: one or more letters, digits, `.`, `-`, `_`.
fn is_bank_id(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// A caller as the API sees it after authentication (no secret inside).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// The id of the token it presented (`tok_...`).
    pub token_id: String,
    /// The user it acts as (OBP `created_by_user_id`).
    pub user_id: String,
    /// The merchant it acts for on the Rabo routes, if any.
    pub merchant_id: Option<String>,
    /// What it may do.
    pub roles: Vec<RoleGrant>,
}

impl Caller {
    /// Whether any of its grants permits `role` at `bank`.
    pub fn has_role(&self, role: &str, bank: &str) -> bool {
        self.roles.iter().any(|grant| grant.allows(role, bank))
    }
}

/// A token as stored and as it travels through the catalog log: never the secret, only its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// `tok_` + 16 lowercase alphanumerics (the store key).
    pub id: String,
    /// SHA-256 of the secret (lowercase hex in JSON).
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

const ID_PREFIX: &str = "tok_";
const SECRET_PREFIX: &str = "whd_";
const ID_TAIL_LEN: usize = 16;
const SECRET_TAIL_LEN: usize = 32;
const SECRET_LEN: usize = SECRET_PREFIX.len() + ID_TAIL_LEN + 1 + SECRET_TAIL_LEN;
const LOWER_ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A freshly minted token: the secret is shown once, only the hash is stored.
pub struct MintedToken {
    /// `tok_` + 16 lowercase alphanumerics: public, names the token in listings and revocation.
    pub id: String,
    /// `whd_` + the id's 16 characters + `_` + 32 random base62 characters; never store or log it.
    pub secret: String,
    /// SHA-256 of the whole secret: what the store keeps.
    pub hash: [u8; 32],
}

impl fmt::Debug for MintedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MintedToken")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Mints a new token from the operating system's random source.
pub fn mint_token() -> MintedToken {
    let tail = random_chars(LOWER_ALNUM, ID_TAIL_LEN);
    let secret = format!("{SECRET_PREFIX}{tail}_{}", random_chars(BASE62, SECRET_TAIL_LEN));
    MintedToken { id: format!("{ID_PREFIX}{tail}"), hash: hash_token(&secret), secret }
}

fn random_chars(alphabet: &[u8], len: usize) -> String {
    let mut rng = OsRng;
    (0..len).map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char).collect()
}

/// The id of the token `secret` claims to be (`whd_<16>_<32>` gives `tok_<16>`); `None` for any
/// other shape.
pub fn token_id_of(secret: &str) -> Option<String> {
    let bytes = secret.as_bytes();
    if bytes.len() != SECRET_LEN || !secret.starts_with(SECRET_PREFIX) {
        return None;
    }
    let rest = &bytes[SECRET_PREFIX.len()..];
    let (tail, rest) = rest.split_at(ID_TAIL_LEN);
    let (separator, random) = rest.split_at(1);
    let shaped = tail.iter().all(|b| LOWER_ALNUM.contains(b))
        && separator == b"_"
        && random.iter().all(|b| b.is_ascii_alphanumeric());
    // All checked bytes are ASCII, so the tail is valid UTF-8.
    shaped.then(|| format!("{ID_PREFIX}{}", String::from_utf8_lossy(tail)))
}

/// SHA-256 of the whole secret.
pub fn hash_token(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Whether two token hashes are equal, in time independent of where they differ.
pub fn hashes_match(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.as_slice().ct_eq(b.as_slice()).into()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn bank(role: &str, bank: &str) -> RoleGrant {
        RoleGrant { role: role.into(), bank: BankScope::Bank(bank.into()) }
    }

    fn all(role: &str) -> RoleGrant {
        RoleGrant { role: role.into(), bank: BankScope::All }
    }

    #[test]
    fn auth_role_grants_parse() {
        assert_eq!(
            RoleGrant::parse("CanCreateWebhook@gh.29.uk").unwrap(),
            bank("CanCreateWebhook", "gh.29.uk")
        );
        assert_eq!(RoleGrant::parse("CanGetWebhooks@*").unwrap(), all("CanGetWebhooks"));
        assert_eq!(RoleGrant::parse("CanManageDeliveries").unwrap(), all("CanManageDeliveries"));
        assert_eq!(
            RoleGrant::parse("CanManageDeliveries@b-1_x").unwrap(),
            bank("CanManageDeliveries", "b-1_x")
        );
        assert_eq!(RoleGrant::parse("X@*").unwrap(), all("X"));
        assert_eq!(RoleGrant::parse("X@bank").unwrap(), bank("X", "bank"));
        assert_eq!(RoleGrant::parse("Custom2").unwrap(), all("Custom2"));
        assert_eq!("X@bank".parse::<RoleGrant>().unwrap(), bank("X", "bank"));
    }

    #[test]
    fn auth_bad_role_grants_are_refused() {
        for text in ["", "@b", "@*", "Can Create@b", "1Can@b", "Can-Create@b", "Cän@b", " X@b", "X @b"] {
            assert_eq!(
                RoleGrant::parse(text),
                Err(AuthError::InvalidRole { grant: text.into() }),
                "{text:?}"
            );
        }
        for text in ["X@", "X@a@b", "X@a b", "X@**", "X@ba/nk", "X@b*", "X@bänk", "X@b\n"] {
            assert_eq!(
                RoleGrant::parse(text),
                Err(AuthError::InvalidBank { grant: text.into() }),
                "{text:?}"
            );
        }
        for role in roles::BANK_SCOPED {
            assert_eq!(RoleGrant::parse(role), Err(AuthError::BankRequired { role: role.to_string() }));
        }
        let message = RoleGrant::parse("CanCreateWebhook").unwrap_err().to_string();
        assert!(message.contains("CanCreateWebhook@*"), "{message}");
    }

    #[test]
    fn auth_role_grants_display_as_parsed() {
        for text in ["CanCreateWebhook@gh.29.uk", "CanGetWebhooks@*", "X@b"] {
            let grant = RoleGrant::parse(text).unwrap();
            assert_eq!(grant.to_string(), text);
            assert_eq!(RoleGrant::parse(&grant.to_string()).unwrap(), grant);
        }
        assert_eq!(RoleGrant::parse("CanManageDeliveries").unwrap().to_string(), "CanManageDeliveries@*");
    }

    #[test]
    fn auth_role_grants_serialize() {
        let grants = vec![all("CanGetWebhooks"), bank("CanCreateWebhook", "gh.29.uk")];
        let json = serde_json::to_string(&grants).unwrap();
        assert_eq!(
            json,
            r#"[{"role":"CanGetWebhooks","bank":"all"},{"role":"CanCreateWebhook","bank":{"bank":"gh.29.uk"}}]"#
        );
        assert_eq!(serde_json::from_str::<Vec<RoleGrant>>(&json).unwrap(), grants);
    }

    #[test]
    fn auth_allows_matches_role_and_bank() {
        let one = bank(roles::CAN_CREATE_WEBHOOK, "gh.29.uk");
        assert!(one.allows(roles::CAN_CREATE_WEBHOOK, "gh.29.uk"));
        assert!(!one.allows(roles::CAN_CREATE_WEBHOOK, "other"));
        assert!(!one.allows(roles::CAN_CREATE_WEBHOOK, "GH.29.UK"));
        assert!(!one.allows(roles::CAN_GET_WEBHOOKS, "gh.29.uk"));
        assert!(!one.allows("canCreateWebhook", "gh.29.uk"));
        assert!(!one.allows(roles::CAN_CREATE_WEBHOOK, "*"), "a bank named * is not every bank");

        let every = all(roles::CAN_GET_WEBHOOKS);
        assert!(every.allows(roles::CAN_GET_WEBHOOKS, "gh.29.uk"));
        assert!(every.allows(roles::CAN_GET_WEBHOOKS, "other"));
        assert!(!every.allows(roles::CAN_UPDATE_WEBHOOK, "gh.29.uk"));
    }

    #[test]
    fn auth_caller_has_role_from_any_grant() {
        let caller = Caller {
            token_id: "tok_0123456789abcdef".into(),
            user_id: "u".into(),
            merchant_id: None,
            roles: vec![bank(roles::CAN_CREATE_WEBHOOK, "a"), all(roles::CAN_GET_WEBHOOKS)],
        };
        assert!(caller.has_role(roles::CAN_CREATE_WEBHOOK, "a"));
        assert!(!caller.has_role(roles::CAN_CREATE_WEBHOOK, "b"));
        assert!(caller.has_role(roles::CAN_GET_WEBHOOKS, "b"));
        assert!(!caller.has_role(roles::CAN_MANAGE_DELIVERIES, "a"));
        let nobody = Caller { roles: vec![], ..caller };
        assert!(!nobody.has_role(roles::CAN_GET_WEBHOOKS, "a"));
    }

    #[test]
    fn auth_minted_tokens_have_the_documented_shape() {
        let token = mint_token();
        let tail = token.id.strip_prefix("tok_").unwrap();
        assert_eq!(tail.len(), 16);
        assert!(tail.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()), "{}", token.id);
        let (head, random) = token.secret.rsplit_once('_').unwrap();
        assert_eq!(head, format!("whd_{tail}"));
        assert_eq!(random.len(), 32);
        assert!(random.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(token.secret.len(), 53);
        assert_eq!(token.hash, hash_token(&token.secret));

        let other = mint_token();
        assert_ne!(other.id, token.id);
        assert_ne!(other.secret, token.secret);
        assert!(!hashes_match(&other.hash, &token.hash));
    }

    #[test]
    fn auth_token_id_round_trips() {
        for _ in 0..50 {
            let token = mint_token();
            assert_eq!(token_id_of(&token.secret).as_deref(), Some(token.id.as_str()));
        }
        let fixed = "whd_0123456789abcdef_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef";
        assert_eq!(token_id_of(fixed).as_deref(), Some("tok_0123456789abcdef"));
    }

    #[test]
    fn auth_token_id_of_rejects_garbage() {
        let good = "whd_0123456789abcdef_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef";
        let bad = [
            String::new(),
            "whd_".into(),
            "tok_0123456789abcdef".into(),
            good.replacen("whd_", "WHD_", 1),
            good.replacen("whd_", "xyz_", 1),
            good.replacen('0', "A", 1),
            good.replacen("f_", "f-", 1),
            good.replacen('A', "-", 1),
            good.replacen('A', "_", 1),
            format!("{good}x"),
            good[..good.len() - 1].to_owned(),
            format!(" {}", &good[1..]),
            format!("Bearer {good}"),
            good.replacen('A', "é", 1),
            good.replacen("AB", "é", 1),
            "é".repeat(53),
            "🦀".repeat(14),
            "whd_0123456789abcdef_".to_owned() + &"é".repeat(16),
        ];
        for text in &bad {
            assert_eq!(token_id_of(text), None, "{text:?}");
        }
    }

    #[test]
    fn auth_hashes_compare_by_value() {
        let a = hash_token("whd_a");
        assert_eq!(a, hash_token("whd_a"));
        assert!(hashes_match(&a, &hash_token("whd_a")));
        assert!(!hashes_match(&a, &hash_token("whd_b")));
        let mut flipped = a;
        flipped[31] ^= 1;
        assert!(!hashes_match(&a, &flipped));
        // SHA-256 of "abc", a published test vector.
        assert_eq!(hash_token("abc")[..4], [0xba, 0x78, 0x16, 0xbf]);
    }

    #[test]
    fn auth_debug_hides_the_secret() {
        let token = mint_token();
        let shown = format!("{token:?} {token:#?}");
        assert!(shown.contains(&token.id), "{shown}");
        assert!(!shown.contains(&token.secret), "{shown}");
        let random = token.secret.rsplit_once('_').unwrap().1;
        assert!(!shown.contains(random), "{shown}");
    }
}
