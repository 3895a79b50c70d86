//! Signing of outgoing webhooks, key storage, key rotation and the published JWKS.
//!
//! webhookd signs every delivery so that receivers can tell it came from us and was not altered on the way.
//! Both schemes are asymmetric: the sidecar keeps the secret halves and publishes only the public halves, so no
//! shared secret ever has to be handed to (or leaked by) a receiver.
//!
//! * **Standard Webhooks, asymmetric `v1a`** (used for the Open Bank Project account webhooks, where OBP itself signs
//!   nothing): the headers `webhook-id`, `webhook-timestamp` (unix seconds) and
//!   `webhook-signature: v1a,<base64 Ed25519 signature over "{id}.{timestamp}.{body}">`. The id and the timestamp are
//!   inside the signed content so a captured delivery cannot be re-labelled or replayed outside the receiver's skew
//!   window. Key texts follow the Standard Webhooks conventions: `whsk_<base64 of the 32-byte seed>` for the secret
//!   and `whpk_<base64 of the 32-byte public key>` for the public key.
//! * **Rabo Smart Pay** (`x-smartpay-signature`): a detached JWS (RFC 7515 appendix F) with ES256 over the raw body,
//!   `BASE64URL(header) + ".." + BASE64URL(signature)` with the header `{"alg":"ES256","kid":"<kid>"}`. The signing
//!   input is `BASE64URL(header) + "." + BASE64URL(body)` and the signature is the 64-byte `r || s`. This is what the
//!   Smart Pay webhook documents prescribe; the `kid` lets a receiver pick the right key from our JWKS.
//!
//! Public keys of both kinds are published as a JWKS (`{"keys":[...]}`, served at `/.well-known/jwks.json`): ES256 keys
//! as EC P-256 JWKs and Ed25519 keys as OKP JWKs. Rotation makes a fresh pair active; the previous keys stop signing
//! but stay published until `retired_at + keep_secs`, so deliveries signed just before a rotation (and their retries,
//! which are re-signed with the new keys anyway) keep verifying for receivers that cache the JWKS.
//!
//! Nothing here panics on untrusted input: malformed headers, bad base64, wrong lengths or unknown key ids all come
//! back as [`SigningError`].

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use rand::rngs::OsRng;
use rand::Rng as _;
use serde_json::{json, Value};

/// Prefix of a Standard Webhooks asymmetric secret key text.
const SECRET_PREFIX: &str = "whsk_";
/// Prefix of a Standard Webhooks asymmetric public key text.
const PUBLIC_PREFIX: &str = "whpk_";
/// Version tag of an asymmetric Standard Webhooks signature.
const V1A: &str = "v1a";
/// Length of the random part of a generated kid.
const KID_RANDOM_LEN: usize = 12;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// A key (secret or public, text or JWK) could not be parsed or is not a valid key.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// A set of key records does not form a usable key ring.
    #[error("invalid key ring: {0}")]
    InvalidKeyRing(String),
    /// No key with this kid is published.
    #[error("unknown kid: {0}")]
    UnknownKid(String),
    /// The algorithm named by a signature is not the one expected.
    #[error("unsupported algorithm: {0}")]
    UnsupportedAlg(String),
    /// The signature is well-formed but does not verify.
    #[error("bad signature")]
    BadSignature,
    /// A header, token or document is not in the expected shape.
    #[error("malformed: {0}")]
    Malformed(String),
}

/// Which algorithm a key is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyAlg {
    /// Ed25519, for Standard Webhooks `v1a` signatures.
    Ed25519,
    /// ECDSA P-256 with SHA-256, for Rabo Smart Pay detached JWS.
    Es256,
}

impl KeyAlg {
    /// The lowercase name used in kids and messages.
    fn name(self) -> &'static str {
        match self {
            KeyAlg::Ed25519 => "ed25519",
            KeyAlg::Es256 => "es256",
        }
    }
}

/// One stored key: what the data dir keeps (secret included).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct KeyRecord {
    /// Key id, unique in the ring; published as the JWK `kid`.
    pub kid: String,
    /// Algorithm of the key.
    pub alg: KeyAlg,
    /// Secret: `whsk_<base64 seed>` for Ed25519, base64url (no padding) of the 32-byte scalar for ES256.
    pub secret: String,
    /// Creation time, unix seconds.
    pub created_at: i64,
    /// When the key stopped signing (unix seconds); `None` for the active key.
    pub retired_at: Option<i64>,
}

impl fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRecord")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("secret", &"<redacted>")
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .finish()
    }
}

/// Public half of a stored key, parsed once.
#[derive(Clone)]
enum PublicKey {
    Ed25519(ed25519_dalek::VerifyingKey),
    Es256(p256::ecdsa::VerifyingKey),
}

/// The key ring in use, shared by everything that signs or publishes keys, and replaced as a
/// whole when rotated keys are reloaded while the service runs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SharedKeys {
    ring: Arc<RwLock<Arc<KeyRing>>>,
}

impl SharedKeys {
    /// Shares `ring`.
    pub fn new(ring: KeyRing) -> SharedKeys {
        SharedKeys { ring: Arc::new(RwLock::new(Arc::new(ring))) }
    }

    /// The ring in use now.
    pub fn current(&self) -> Arc<KeyRing> {
        self.ring.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// A signer over the active pair in use now.
    pub fn signer(&self) -> Signer {
        self.current().signer()
    }

    /// Puts `ring` in use: the next signature and the next JWKS come from it.
    pub fn replace(&self, ring: KeyRing) {
        *self.ring.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(ring);
    }
}

/// All keys: the active pair that signs, and retired ones still published.
#[derive(Clone)]
pub struct KeyRing {
    /// Stored form of every key, in insertion order.
    records: Vec<KeyRecord>,
    /// Public halves, index-aligned with `records`.
    publics: Vec<PublicKey>,
    /// Signer over the active pair.
    signer: Signer,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing").field("records", &self.records).field("signer", &self.signer).finish()
    }
}

impl KeyRing {
    /// A fresh ring with one active Ed25519 and one active ES256 key, created at `now`.
    pub fn generate(now: i64) -> KeyRing {
        let mut records = Vec::with_capacity(2);
        let mut publics = Vec::with_capacity(2);
        let (ed, es) = new_pair(now, &mut records, &mut publics);
        KeyRing { records, publics, signer: Signer::new(ed, es) }
    }

    /// Rebuilds a ring from stored records; exactly one active (`retired_at: None`) key per algorithm is required.
    pub fn from_records(records: Vec<KeyRecord>) -> Result<KeyRing, SigningError> {
        let mut publics = Vec::with_capacity(records.len());
        let mut active_ed: Option<(String, ed25519_dalek::SigningKey)> = None;
        let mut active_es: Option<(String, p256::ecdsa::SigningKey)> = None;
        for (i, record) in records.iter().enumerate() {
            if record.kid.is_empty() {
                return Err(SigningError::InvalidKeyRing("a key has an empty kid".into()));
            }
            if records.iter().take(i).any(|r| r.kid == record.kid) {
                return Err(SigningError::InvalidKeyRing(format!("duplicate kid {:?}", record.kid)));
            }
            let active = record.retired_at.is_none();
            match record.alg {
                KeyAlg::Ed25519 => {
                    let key = parse_ed25519_secret(&record.secret)
                        .map_err(|e| SigningError::InvalidKey(format!("key {:?}: {e}", record.kid)))?;
                    publics.push(PublicKey::Ed25519(key.verifying_key()));
                    if active {
                        if active_ed.is_some() {
                            return Err(too_many_active(KeyAlg::Ed25519));
                        }
                        active_ed = Some((record.kid.clone(), key));
                    }
                }
                KeyAlg::Es256 => {
                    let key = parse_es256_secret(&record.secret)
                        .map_err(|e| SigningError::InvalidKey(format!("key {:?}: {e}", record.kid)))?;
                    publics.push(PublicKey::Es256(*key.verifying_key()));
                    if active {
                        if active_es.is_some() {
                            return Err(too_many_active(KeyAlg::Es256));
                        }
                        active_es = Some((record.kid.clone(), key));
                    }
                }
            }
        }
        let ed = active_ed.ok_or_else(|| no_active(KeyAlg::Ed25519))?;
        let es = active_es.ok_or_else(|| no_active(KeyAlg::Es256))?;
        Ok(KeyRing { records, publics, signer: Signer::new(ed, es) })
    }

    /// Every stored key (active and retired), in the order they were added; this is what to persist.
    pub fn records(&self) -> &[KeyRecord] {
        &self.records
    }

    /// Retires the active keys (`retired_at = now`) and adds a new active pair; existing `Signer` clones keep the old keys.
    pub fn rotate(&mut self, now: i64) {
        for record in &mut self.records {
            if record.retired_at.is_none() {
                record.retired_at = Some(now);
            }
        }
        let (ed, es) = new_pair(now, &mut self.records, &mut self.publics);
        self.signer = Signer::new(ed, es);
    }

    /// Drops retired keys with `retired_at + keep_secs <= now`; returns how many were dropped.
    pub fn prune(&mut self, now: i64, keep_secs: i64) -> usize {
        let before = self.records.len();
        let mut kept_records = Vec::with_capacity(before);
        let mut kept_publics = Vec::with_capacity(before);
        for (record, public) in self.records.drain(..).zip(self.publics.drain(..)) {
            if is_published(&record, now, keep_secs) {
                kept_records.push(record);
                kept_publics.push(public);
            }
        }
        self.records = kept_records;
        self.publics = kept_publics;
        before.saturating_sub(self.records.len())
    }

    /// A signer over the active pair; cheap to clone.
    pub fn signer(&self) -> Signer {
        self.signer.clone()
    }

    /// The JWKS to publish: active keys first, then retired keys still inside the keep window (most recently retired first).
    pub fn jwks(&self, now: i64, keep_secs: i64) -> Value {
        let mut entries: Vec<(&KeyRecord, &PublicKey)> = self
            .records
            .iter()
            .zip(self.publics.iter())
            .filter(|(record, _)| is_published(record, now, keep_secs))
            .collect();
        // Stable sort: active (None) first, then by retired_at descending; ties keep insertion order.
        entries.sort_by_key(|(record, _)| match record.retired_at {
            None => (0, 0),
            Some(at) => (1, at.checked_neg().unwrap_or(i64::MAX)),
        });
        let keys: Vec<Value> =
            entries.into_iter().filter_map(|(record, public)| public_jwk(&record.kid, public)).collect();
        json!({ "keys": keys })
    }

    /// The `whpk_` text of the active Ed25519 key, for receivers of Standard Webhooks signatures.
    pub fn standard_webhooks_public_key(&self) -> String {
        whpk(&self.signer.inner.ed25519.verifying_key())
    }
}

/// Whether a record is still published at `now`: active, or retired less than `keep_secs` ago.
fn is_published(record: &KeyRecord, now: i64, keep_secs: i64) -> bool {
    match record.retired_at {
        None => true,
        Some(at) => at.saturating_add(keep_secs) > now,
    }
}

fn too_many_active(alg: KeyAlg) -> SigningError {
    SigningError::InvalidKeyRing(format!("more than one active {} key", alg.name()))
}

fn no_active(alg: KeyAlg) -> SigningError {
    SigningError::InvalidKeyRing(format!("no active {} key", alg.name()))
}

/// Generates a new active Ed25519 + ES256 pair, appends it to the ring's vectors and returns the signing halves.
#[allow(clippy::type_complexity)]
fn new_pair(
    now: i64,
    records: &mut Vec<KeyRecord>,
    publics: &mut Vec<PublicKey>,
) -> ((String, ed25519_dalek::SigningKey), (String, p256::ecdsa::SigningKey)) {
    let ed = ed25519_dalek::SigningKey::generate(&mut OsRng);
    let ed_kid = unique_kid(KeyAlg::Ed25519, records);
    records.push(KeyRecord {
        kid: ed_kid.clone(),
        alg: KeyAlg::Ed25519,
        secret: format!("{SECRET_PREFIX}{}", STANDARD.encode(ed.to_bytes())),
        created_at: now,
        retired_at: None,
    });
    publics.push(PublicKey::Ed25519(ed.verifying_key()));

    let es = p256::ecdsa::SigningKey::random(&mut OsRng);
    let es_kid = unique_kid(KeyAlg::Es256, records);
    records.push(KeyRecord {
        kid: es_kid.clone(),
        alg: KeyAlg::Es256,
        secret: URL_SAFE_NO_PAD.encode(es.to_bytes()),
        created_at: now,
        retired_at: None,
    });
    publics.push(PublicKey::Es256(*es.verifying_key()));

    ((ed_kid, ed), (es_kid, es))
}

/// A kid `<alg>-<12 random lowercase alphanumerics>` not used by any existing record.
fn unique_kid(alg: KeyAlg, existing: &[KeyRecord]) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    loop {
        let suffix: String =
            (0..KID_RANDOM_LEN).map(|_| char::from(ALPHABET[OsRng.gen_range(0..ALPHABET.len())])).collect();
        let kid = format!("{}-{suffix}", alg.name());
        if !existing.iter().any(|r| r.kid == kid) {
            return kid;
        }
    }
}

/// Parses `whsk_<base64 of the 32-byte seed>`.
fn parse_ed25519_secret(text: &str) -> Result<ed25519_dalek::SigningKey, String> {
    let b64 = text
        .strip_prefix(SECRET_PREFIX)
        .ok_or_else(|| format!("ed25519 secret must start with {SECRET_PREFIX}"))?;
    let bytes = STANDARD.decode(b64).map_err(|_| "ed25519 secret is not valid base64".to_string())?;
    let seed: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| format!("ed25519 secret must be 32 bytes, got {}", bytes.len()))?;
    Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
}

/// Parses base64url (no padding) of a 32-byte P-256 scalar.
fn parse_es256_secret(text: &str) -> Result<p256::ecdsa::SigningKey, String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| "es256 secret is not valid unpadded base64url".to_string())?;
    if bytes.len() != 32 {
        return Err(format!("es256 secret must be 32 bytes, got {}", bytes.len()));
    }
    p256::ecdsa::SigningKey::from_slice(&bytes)
        .map_err(|_| "es256 secret is not a valid P-256 scalar".to_string())
}

/// Parses `whpk_<base64 of the 32-byte public key>`.
fn parse_whpk(text: &str) -> Result<ed25519_dalek::VerifyingKey, SigningError> {
    let b64 = text
        .strip_prefix(PUBLIC_PREFIX)
        .ok_or_else(|| SigningError::InvalidKey(format!("public key must start with {PUBLIC_PREFIX}")))?;
    let bytes = STANDARD
        .decode(b64)
        .map_err(|_| SigningError::InvalidKey("public key is not valid base64".into()))?;
    let raw: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| SigningError::InvalidKey(format!("public key must be 32 bytes, got {}", bytes.len())))?;
    ed25519_dalek::VerifyingKey::from_bytes(&raw)
        .map_err(|_| SigningError::InvalidKey("not a valid Ed25519 public key".into()))
}

/// The `whpk_` text of an Ed25519 public key.
fn whpk(key: &ed25519_dalek::VerifyingKey) -> String {
    format!("{PUBLIC_PREFIX}{}", STANDARD.encode(key.to_bytes()))
}

/// The public JWK of one key (`None` only if the point cannot be encoded, which does not happen for valid keys).
fn public_jwk(kid: &str, public: &PublicKey) -> Option<Value> {
    match public {
        PublicKey::Ed25519(key) => Some(json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(key.to_bytes()),
            "kid": kid,
            "use": "sig",
            "alg": "EdDSA",
        })),
        PublicKey::Es256(key) => {
            let point = key.to_encoded_point(false);
            let (x, y) = (point.x()?, point.y()?);
            Some(json!({
                "kty": "EC",
                "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(x),
                "y": URL_SAFE_NO_PAD.encode(y),
                "kid": kid,
                "use": "sig",
                "alg": "ES256",
            }))
        }
    }
}

/// The content signed by a Standard Webhooks signature: `{id}.{timestamp}.{body}`.
fn standard_webhooks_content(msg_id: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(
        msg_id.len().saturating_add(timestamp.len()).saturating_add(body.len()).saturating_add(2),
    );
    content.extend_from_slice(msg_id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(timestamp.as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    content
}

/// The JWS signing input: `header_b64 + "." + BASE64URL(body)`.
fn jws_signing_input(header_b64: &str, body: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(
        header_b64.len().saturating_add(1).saturating_add(body.len().div_ceil(3).saturating_mul(4)),
    );
    input.extend_from_slice(header_b64.as_bytes());
    input.push(b'.');
    input.extend_from_slice(URL_SAFE_NO_PAD.encode(body).as_bytes());
    input
}

/// Signs outgoing webhooks with the active keys.
#[derive(Clone)]
pub struct Signer {
    inner: Arc<SignerInner>,
}

struct SignerInner {
    ed25519_kid: String,
    ed25519: ed25519_dalek::SigningKey,
    es256_kid: String,
    es256: p256::ecdsa::SigningKey,
    /// The same ES256 key in aws-lc-rs (assembly P-256, about 10x faster than `p256`'s portable
    /// arithmetic, which was a sixth of the CPU per Rabo delivery); `None` only if aws-lc-rs
    /// refused the key, and then `es256` signs.
    es256_fast: Option<aws_lc_rs::signature::EcdsaKeyPair>,
    /// BASE64URL of `{"alg":"ES256","kid":"<es256_kid>"}`, computed once.
    jws_header_b64: String,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("ed25519_kid", &self.inner.ed25519_kid)
            .field("es256_kid", &self.inner.es256_kid)
            .finish_non_exhaustive()
    }
}

impl Signer {
    fn new(
        (ed25519_kid, ed25519): (String, ed25519_dalek::SigningKey),
        (es256_kid, es256): (String, p256::ecdsa::SigningKey),
    ) -> Signer {
        // Value's Display escapes the kid as a JSON string and cannot fail.
        let header = format!(r#"{{"alg":"ES256","kid":{}}}"#, Value::String(es256_kid.clone()));
        let public = es256.verifying_key().to_encoded_point(false);
        let es256_fast = aws_lc_rs::signature::EcdsaKeyPair::from_private_key_and_public_key(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &es256.to_bytes(),
            public.as_bytes(),
        )
        .ok();
        Signer {
            inner: Arc::new(SignerInner {
                ed25519_kid,
                ed25519,
                es256_kid,
                es256,
                es256_fast,
                jws_header_b64: URL_SAFE_NO_PAD.encode(header),
            }),
        }
    }

    /// The `webhook-signature` value `v1a,<base64 Ed25519 signature over "{msg_id}.{timestamp}.{body}">`.
    pub fn standard_webhooks_signature(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let content = standard_webhooks_content(msg_id, &timestamp.to_string(), body);
        let signature: ed25519_dalek::Signature = self.inner.ed25519.sign(&content);
        format!("{V1A},{}", STANDARD.encode(signature.to_bytes()))
    }

    /// The `x-smartpay-signature` value: a detached ES256 JWS `header..signature` over the raw body.
    pub fn detached_jws(&self, body: &[u8]) -> String {
        let input = jws_signing_input(&self.inner.jws_header_b64, body);
        let fast = self.inner.es256_fast.as_ref().and_then(|key| {
            // Fixed signing gives r || s (64 bytes), JWS's ES256 form; it fails only if the system
            // RNG does, and then the portable signer below is used.
            key.sign(&aws_lc_rs::rand::SystemRandom::new(), &input)
                .ok()
                .map(|signature| URL_SAFE_NO_PAD.encode(signature.as_ref()))
        });
        let signature = fast.unwrap_or_else(|| {
            let signature: p256::ecdsa::Signature = self.inner.es256.sign(&input);
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        });
        format!("{}..{}", self.inner.jws_header_b64, signature)
    }

    /// Kid of the Ed25519 key this signer uses.
    pub fn ed25519_kid(&self) -> &str {
        &self.inner.ed25519_kid
    }

    /// Kid of the ES256 key this signer uses (also the `kid` in every JWS header it makes).
    pub fn es256_kid(&self) -> &str {
        &self.inner.es256_kid
    }
}

/// Receiver-side checks, used by tests and the replay harness.
pub mod verify {
    use super::*;

    /// Checks a `webhook-signature` header against a `whpk_` key; ok if any space-separated `v1a,...` entry verifies.
    ///
    /// The timestamp is used exactly as received (it must be a decimal integer); checking its skew against the
    /// clock is up to the caller. Entries of other versions (such as symmetric `v1`) are ignored.
    pub fn standard_webhooks(
        public_key: &str,
        msg_id: &str,
        timestamp: &str,
        body: &[u8],
        signature_header: &str,
    ) -> Result<(), SigningError> {
        let key = parse_whpk(public_key)?;
        if timestamp.parse::<i64>().is_err() {
            return Err(SigningError::Malformed("webhook-timestamp is not an integer".into()));
        }
        let content = standard_webhooks_content(msg_id, timestamp, body);
        let mut candidates = 0usize;
        for entry in signature_header.split_ascii_whitespace() {
            let Some((version, b64)) = entry.split_once(',') else {
                continue;
            };
            if version != V1A {
                continue;
            }
            let Ok(bytes) = STANDARD.decode(b64) else {
                continue;
            };
            let Ok(signature) = ed25519_dalek::Signature::from_slice(&bytes) else {
                continue;
            };
            candidates = candidates.saturating_add(1);
            if key.verify_strict(&content, &signature).is_ok() {
                return Ok(());
            }
        }
        if candidates == 0 {
            Err(SigningError::Malformed("no well-formed v1a signature in webhook-signature".into()))
        } else {
            Err(SigningError::BadSignature)
        }
    }

    /// Checks a detached ES256 JWS over `body` with the key named by its `kid` in `jwks`.
    pub fn detached_jws(jwks: &Value, jws: &str, body: &[u8]) -> Result<(), SigningError> {
        let mut parts = jws.split('.');
        let (Some(header_b64), Some(payload), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SigningError::Malformed("a JWS has exactly three dot-separated parts".into()));
        };
        if !payload.is_empty() {
            return Err(SigningError::Malformed("expected a detached JWS (empty payload part)".into()));
        }
        let header_bytes = URL_SAFE_NO_PAD
            .decode(header_b64)
            .map_err(|_| SigningError::Malformed("JWS header is not base64url".into()))?;
        let header: Value = serde_json::from_slice(&header_bytes)
            .map_err(|_| SigningError::Malformed("JWS header is not JSON".into()))?;
        let header = header
            .as_object()
            .ok_or_else(|| SigningError::Malformed("JWS header is not a JSON object".into()))?;
        match header.get("alg") {
            Some(Value::String(alg)) if alg == "ES256" => {}
            Some(Value::String(alg)) => return Err(SigningError::UnsupportedAlg(alg.clone())),
            _ => return Err(SigningError::Malformed("JWS header has no alg".into())),
        }
        if header.contains_key("crit") {
            // RFC 7515 4.1.11: extensions we do not understand must make the JWS invalid.
            return Err(SigningError::Malformed("JWS header has critical extensions".into()));
        }
        let kid = match header.get("kid") {
            Some(Value::String(kid)) => kid.as_str(),
            _ => return Err(SigningError::Malformed("JWS header has no kid".into())),
        };
        let key = es256_key_from_jwks(jwks, kid)?;
        let signature_bytes = URL_SAFE_NO_PAD
            .decode(signature_b64)
            .map_err(|_| SigningError::Malformed("JWS signature is not base64url".into()))?;
        if signature_bytes.len() != 64 {
            return Err(SigningError::Malformed(format!(
                "ES256 signature must be 64 bytes, got {}",
                signature_bytes.len()
            )));
        }
        let signature =
            p256::ecdsa::Signature::from_slice(&signature_bytes).map_err(|_| SigningError::BadSignature)?;
        let input = jws_signing_input(header_b64, body);
        p256::ecdsa::signature::Verifier::verify(&key, &input, &signature)
            .map_err(|_| SigningError::BadSignature)
    }

    /// The `whpk_` forms of the Ed25519 (OKP) keys in a JWKS, in JWKS order; invalid entries are skipped.
    pub fn ed25519_public_keys(jwks: &Value) -> Vec<String> {
        let Some(keys) = jwks.get("keys").and_then(Value::as_array) else {
            return Vec::new();
        };
        keys.iter()
            .filter(|k| str_field(k, "kty") == Some("OKP") && str_field(k, "crv") == Some("Ed25519"))
            .filter_map(|k| {
                let bytes = URL_SAFE_NO_PAD.decode(str_field(k, "x")?).ok()?;
                let raw: [u8; 32] = bytes.as_slice().try_into().ok()?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(&raw).ok()?;
                Some(whpk(&key))
            })
            .collect()
    }

    fn str_field<'a>(value: &'a Value, name: &str) -> Option<&'a str> {
        value.get(name).and_then(Value::as_str)
    }

    /// Finds the key with `kid` in a JWKS and parses it as a P-256 signing key usable for ES256.
    fn es256_key_from_jwks(jwks: &Value, kid: &str) -> Result<p256::ecdsa::VerifyingKey, SigningError> {
        let keys = jwks
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| SigningError::Malformed("JWKS has no keys array".into()))?;
        let jwk = keys
            .iter()
            .find(|k| str_field(k, "kid") == Some(kid))
            .ok_or_else(|| SigningError::UnknownKid(kid.to_string()))?;
        if str_field(jwk, "kty") != Some("EC") || str_field(jwk, "crv") != Some("P-256") {
            return Err(SigningError::InvalidKey(format!("key {kid:?} is not an EC P-256 key")));
        }
        if let Some(alg) = jwk.get("alg") {
            if alg.as_str() != Some("ES256") {
                return Err(SigningError::InvalidKey(format!("key {kid:?} is not for ES256")));
            }
        }
        if let Some(usage) = jwk.get("use") {
            if usage.as_str() != Some("sig") {
                return Err(SigningError::InvalidKey(format!("key {kid:?} is not a signing key")));
            }
        }
        let coordinate = |name: &str| -> Result<Vec<u8>, SigningError> {
            let bytes = str_field(jwk, name)
                .and_then(|text| URL_SAFE_NO_PAD.decode(text).ok())
                .ok_or_else(|| SigningError::InvalidKey(format!("key {kid:?} has no valid {name}")))?;
            if bytes.len() != 32 {
                return Err(SigningError::InvalidKey(format!("key {kid:?}: {name} must be 32 bytes")));
            }
            Ok(bytes)
        };
        let mut sec1 = Vec::with_capacity(65);
        sec1.push(0x04);
        sec1.extend_from_slice(&coordinate("x")?);
        sec1.extend_from_slice(&coordinate("y")?);
        p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
            .map_err(|_| SigningError::InvalidKey(format!("key {kid:?} is not on P-256")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_750_000_000;
    const KEEP: i64 = 7 * 24 * 3600;

    fn rabo_body() -> Vec<u8> {
        br#"{"id":"ev_a1b2c3d4e5f6g7h8i9j0k","type":"order.finalized/v1","subscription":{"id":"wsb_abcdefghij0123456789k","description":"shop"},"data":{"orderId":"o-1","status":"COMPLETED","amount":{"total":{"currency":"EUR","amount":1000},"paid":{"currency":"EUR","amount":1000}},"metadata":{}},"timestamp":1750000000}"#.to_vec()
    }

    fn obp_body() -> Vec<u8> {
        br#"{"event_name":"OnBalanceChange","event_id":"0b3c4d1e-1111-4222-8333-944455556666","bank_id":"gh.29.uk","account_id":"acc-1","amount":"50.00 EUR","balance":"739.00 EUR"}"#.to_vec()
    }

    #[test]
    fn generate_makes_one_active_pair_with_unique_kids() {
        let ring = KeyRing::generate(NOW);
        let records = ring.records();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].alg, KeyAlg::Ed25519);
        assert_eq!(records[1].alg, KeyAlg::Es256);
        assert!(records.iter().all(|r| r.retired_at.is_none() && r.created_at == NOW));
        assert_ne!(records[0].kid, records[1].kid);
        assert!(records[0].kid.starts_with("ed25519-"));
        assert!(records[1].kid.starts_with("es256-"));
        assert!(records[0].secret.starts_with("whsk_"));
        let signer = ring.signer();
        assert_eq!(signer.ed25519_kid(), records[0].kid);
        assert_eq!(signer.es256_kid(), records[1].kid);
        let other = KeyRing::generate(NOW);
        assert_ne!(other.records()[0].kid, records[0].kid);
        assert!(ring.standard_webhooks_public_key().starts_with("whpk_"));
    }

    #[test]
    fn standard_webhooks_round_trip() {
        let ring = KeyRing::generate(NOW);
        let signer = ring.signer();
        let body = obp_body();
        let sig = signer.standard_webhooks_signature("msg_1", NOW, &body);
        assert!(sig.starts_with("v1a,"));
        let pk = ring.standard_webhooks_public_key();
        verify::standard_webhooks(&pk, "msg_1", &NOW.to_string(), &body, &sig).unwrap();
        // Several entries side by side: any valid one is enough.
        let header = format!("v1,c29tZWhtYWM= v1a,{} {sig}", STANDARD.encode([7u8; 64]));
        verify::standard_webhooks(&pk, "msg_1", &NOW.to_string(), &body, &header).unwrap();
        // Non-UTF-8 and empty bodies are fine.
        for body in [&b""[..], &[0xff, 0x00, 0xfe][..]] {
            let sig = signer.standard_webhooks_signature("m", 0, body);
            verify::standard_webhooks(&pk, "m", "0", body, &sig).unwrap();
        }
    }

    #[test]
    fn standard_webhooks_rejects_tampering_and_wrong_key() {
        let ring = KeyRing::generate(NOW);
        let signer = ring.signer();
        let pk = ring.standard_webhooks_public_key();
        let body = obp_body();
        let ts = NOW.to_string();
        let sig = signer.standard_webhooks_signature("msg_1", NOW, &body);
        let mut tampered = body.clone();
        tampered[10] ^= 1;
        assert!(matches!(
            verify::standard_webhooks(&pk, "msg_1", &ts, &tampered, &sig),
            Err(SigningError::BadSignature)
        ));
        assert!(matches!(
            verify::standard_webhooks(&pk, "msg_1", &(NOW + 1).to_string(), &body, &sig),
            Err(SigningError::BadSignature)
        ));
        assert!(matches!(
            verify::standard_webhooks(&pk, "msg_2", &ts, &body, &sig),
            Err(SigningError::BadSignature)
        ));
        let other = KeyRing::generate(NOW).standard_webhooks_public_key();
        assert!(matches!(
            verify::standard_webhooks(&other, "msg_1", &ts, &body, &sig),
            Err(SigningError::BadSignature)
        ));
    }

    #[test]
    fn standard_webhooks_malformed_inputs_are_errors() {
        let ring = KeyRing::generate(NOW);
        let pk = ring.standard_webhooks_public_key();
        let sig = ring.signer().standard_webhooks_signature("m", NOW, b"x");
        let ts = NOW.to_string();
        let bad_keys: [&str; 8] = [
            "",
            "whpk_",
            "whpk_!!!!",
            "whsk_AAAA",
            "whpk_AAAA",
            &format!("whpk_{}", STANDARD.encode([0u8; 31])),
            &format!("whpk_{}", STANDARD.encode([0u8; 33])),
            &pk[5..],
        ];
        for key in bad_keys {
            assert!(
                matches!(
                    verify::standard_webhooks(key, "m", &ts, b"x", &sig),
                    Err(SigningError::InvalidKey(_))
                ),
                "{key:?}"
            );
        }
        let bad_headers = [
            "".to_string(),
            "   ".to_string(),
            "v1a".to_string(),
            "v1a,".to_string(),
            "v1a,%%%".to_string(),
            format!("v1a,{}", STANDARD.encode([1u8; 63])),
            format!("v1a,{}", STANDARD.encode([1u8; 65])),
            "v1,abc".to_string(),
            sig.replace("v1a,", "v2a,"),
            "ü,ü,ü".to_string(),
        ];
        for header in &bad_headers {
            assert!(verify::standard_webhooks(&pk, "m", &ts, b"x", header).is_err(), "{header:?}");
        }
        for ts in ["", "abc", "1.5", "99999999999999999999999"] {
            assert!(verify::standard_webhooks(&pk, "m", ts, b"x", &sig).is_err());
        }
    }

    #[test]
    fn ed25519_signature_verifies_independently_with_verify_strict() {
        let ring = KeyRing::generate(NOW);
        let body = obp_body();
        let header = ring.signer().standard_webhooks_signature("msg_9", NOW, &body);
        let pk_text = ring.standard_webhooks_public_key();
        let pk_bytes: [u8; 32] =
            STANDARD.decode(pk_text.strip_prefix("whpk_").unwrap()).unwrap().try_into().unwrap();
        let key = ed25519_dalek::VerifyingKey::from_bytes(&pk_bytes).unwrap();
        let sig_bytes = STANDARD.decode(header.strip_prefix("v1a,").unwrap()).unwrap();
        let sig = ed25519_dalek::Signature::from_slice(&sig_bytes).unwrap();
        let mut content = format!("msg_9.{NOW}.").into_bytes();
        content.extend_from_slice(&body);
        key.verify_strict(&content, &sig).unwrap();
        content.push(b' ');
        assert!(key.verify_strict(&content, &sig).is_err());
    }

    #[test]
    fn detached_jws_round_trip_and_shape() {
        let ring = KeyRing::generate(NOW);
        let signer = ring.signer();
        let body = rabo_body();
        let jws = signer.detached_jws(&body);
        let (header_b64, sig_b64) = jws.split_once("..").unwrap();
        let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header_b64).unwrap()).unwrap();
        assert_eq!(header, json!({"alg": "ES256", "kid": signer.es256_kid()}));
        assert_eq!(
            String::from_utf8(URL_SAFE_NO_PAD.decode(header_b64).unwrap()).unwrap(),
            format!(r#"{{"alg":"ES256","kid":"{}"}}"#, signer.es256_kid())
        );
        assert_eq!(URL_SAFE_NO_PAD.decode(sig_b64).unwrap().len(), 64);
        let jwks = ring.jwks(NOW, KEEP);
        verify::detached_jws(&jwks, &jws, &body).unwrap();
        // Arbitrary bytes are signable too.
        let jws = signer.detached_jws(b"");
        verify::detached_jws(&jwks, &jws, b"").unwrap();
    }

    #[test]
    fn detached_jws_rejects_tampering_and_wrong_key() {
        let ring = KeyRing::generate(NOW);
        let body = rabo_body();
        let jws = ring.signer().detached_jws(&body);
        let jwks = ring.jwks(NOW, KEEP);
        let mut tampered = body.clone();
        tampered[3] ^= 1;
        assert!(matches!(verify::detached_jws(&jwks, &jws, &tampered), Err(SigningError::BadSignature)));
        // Another ring's JWKS does not know the kid.
        let other = KeyRing::generate(NOW);
        assert!(matches!(
            verify::detached_jws(&other.jwks(NOW, KEEP), &jws, &body),
            Err(SigningError::UnknownKid(_))
        ));
        // Same kid, different key material: bad signature.
        let mut swapped = other.jwks(NOW, KEEP);
        let es_kid = ring.signer().es256_kid().to_string();
        for key in swapped["keys"].as_array_mut().unwrap() {
            if key["kty"] == "EC" {
                key["kid"] = json!(es_kid);
            }
        }
        assert!(matches!(verify::detached_jws(&swapped, &jws, &body), Err(SigningError::BadSignature)));
        // A header naming another algorithm is refused even with a valid signature.
        let (_, sig) = jws.split_once("..").unwrap();
        let none_header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","kid":"{es_kid}"}}"#));
        assert!(matches!(
            verify::detached_jws(&jwks, &format!("{none_header}..{sig}"), &body),
            Err(SigningError::UnsupportedAlg(_))
        ));
        // Pointing the JWS at the Ed25519 kid fails cleanly.
        let ed_header =
            URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"ES256","kid":"{}"}}"#, ring.signer().ed25519_kid()));
        assert!(matches!(
            verify::detached_jws(&jwks, &format!("{ed_header}..{sig}"), &body),
            Err(SigningError::InvalidKey(_))
        ));
    }

    #[test]
    fn detached_jws_malformed_inputs_are_errors() {
        let ring = KeyRing::generate(NOW);
        let body = rabo_body();
        let jws = ring.signer().detached_jws(&body);
        let jwks = ring.jwks(NOW, KEEP);
        let (header_b64, sig_b64) = jws.split_once("..").unwrap();
        let kid = ring.signer().es256_kid().to_string();
        let enc = |s: &str| URL_SAFE_NO_PAD.encode(s);
        let bad_tokens = vec![
            String::new(),
            ".".to_string(),
            "..".to_string(),
            "...".to_string(),
            format!("{header_b64}.{}.{sig_b64}", URL_SAFE_NO_PAD.encode(&body)),
            format!("{header_b64}..{sig_b64}.x"),
            format!("{header_b64}.."),
            format!("..{sig_b64}"),
            format!("{header_b64}={sig_b64}"),
            format!("{header_b64}..{sig_b64}="),
            format!("{header_b64}..%%%"),
            format!("{header_b64}..{}", URL_SAFE_NO_PAD.encode([0u8; 64])),
            format!("{header_b64}..{}", URL_SAFE_NO_PAD.encode([0xffu8; 64])),
            format!("{header_b64}..{}", URL_SAFE_NO_PAD.encode([1u8; 63])),
            format!("{}..{sig_b64}", enc("not json")),
            format!("{}..{sig_b64}", enc("[1,2]")),
            format!("{}..{sig_b64}", enc(r#"{"kid":"x"}"#)),
            format!("{}..{sig_b64}", enc(r#"{"alg":5,"kid":"x"}"#)),
            format!("{}..{sig_b64}", enc(r#"{"alg":"ES256"}"#)),
            format!("{}..{sig_b64}", enc(r#"{"alg":"ES256","kid":7}"#)),
            format!(
                "{}..{sig_b64}",
                enc(&format!(r#"{{"alg":"ES256","kid":"{kid}","crit":["b64"],"b64":false}}"#))
            ),
            format!("{}..{sig_b64}", enc(r#"{"alg":"ES256","kid":"nope"}"#)),
            "ü..ü".to_string(),
        ];
        for token in &bad_tokens {
            assert!(verify::detached_jws(&jwks, token, &body).is_err(), "{token:?}");
        }
        let bad_jwks = [
            json!(null),
            json!([]),
            json!({}),
            json!({"keys": {}}),
            json!({"keys": [1, "x", null]}),
            json!({"keys": [{"kid": kid}]}),
            json!({"keys": [{"kid": kid, "kty": "EC", "crv": "P-256"}]}),
            json!({"keys": [{"kid": kid, "kty": "EC", "crv": "P-256", "x": "!!", "y": "AA"}]}),
            json!({"keys": [{"kid": kid, "kty": "EC", "crv": "P-256", "x": enc("short"), "y": enc("short")}]}),
            json!({"keys": [{"kid": kid, "kty": "EC", "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([2u8; 32])}]}),
            json!({"keys": [{"kid": kid, "kty": "EC", "crv": "P-384"}]}),
            json!({"keys": [{"kid": kid, "kty": "RSA", "n": "AQAB", "e": "AQAB"}]}),
        ];
        for set in &bad_jwks {
            assert!(verify::detached_jws(set, &jws, &body).is_err(), "{set}");
        }
        // A JWK that says it is for another algorithm or use is refused.
        let mut wrong_alg = jwks.clone();
        for key in wrong_alg["keys"].as_array_mut().unwrap() {
            key["alg"] = json!("ES384");
        }
        assert!(verify::detached_jws(&wrong_alg, &jws, &body).is_err());
        let mut wrong_use = jwks.clone();
        for key in wrong_use["keys"].as_array_mut().unwrap() {
            key["use"] = json!("enc");
        }
        assert!(verify::detached_jws(&wrong_use, &jws, &body).is_err());
        assert!(verify::ed25519_public_keys(&json!(null)).is_empty());
        assert!(verify::ed25519_public_keys(&json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519"},
            {"kty": "OKP", "crv": "Ed25519", "x": "%%"},
            {"kty": "OKP", "crv": "Ed25519", "x": enc("short")},
            {"kty": "OKP", "crv": "X25519", "x": URL_SAFE_NO_PAD.encode([9u8; 32])},
            7
        ]}))
        .is_empty());
    }

    #[test]
    fn detached_jws_verifies_with_jsonwebtoken() {
        use jsonwebtoken::{decode, jwk::Jwk, Algorithm, DecodingKey, Validation};

        let ring = KeyRing::generate(NOW);
        let signer = ring.signer();
        let body = rabo_body();
        let jws = signer.detached_jws(&body);
        let (header_b64, sig_b64) = jws.split_once("..").unwrap();
        let token = format!("{header_b64}.{}.{sig_b64}", URL_SAFE_NO_PAD.encode(&body));

        let jwks = ring.jwks(NOW, KEEP);
        let entry =
            jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == signer.es256_kid()).unwrap().clone();
        let jwk: Jwk = serde_json::from_value(entry).unwrap();
        let key = DecodingKey::from_jwk(&jwk).unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        let data = decode::<Value>(&token, &key, &validation).unwrap();
        assert_eq!(data.header.kid.as_deref(), Some(signer.es256_kid()));
        assert_eq!(data.claims["type"], "order.finalized/v1");
        assert_eq!(data.claims, serde_json::from_slice::<Value>(&body).unwrap());

        // And jsonwebtoken rejects a tampered payload.
        let mut tampered = body.clone();
        let pos = tampered.iter().position(|&b| b == b'f').unwrap();
        tampered[pos] = b'F';
        let token = format!("{header_b64}.{}.{sig_b64}", URL_SAFE_NO_PAD.encode(&tampered));
        assert!(decode::<Value>(&token, &key, &validation).is_err());
    }

    #[test]
    fn jwks_shape() {
        let ring = KeyRing::generate(NOW);
        let jwks = ring.jwks(NOW, KEEP);
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        let ed = keys.iter().find(|k| k["kty"] == "OKP").unwrap();
        assert_eq!(ed["crv"], "Ed25519");
        assert_eq!(ed["alg"], "EdDSA");
        assert_eq!(ed["use"], "sig");
        assert_eq!(ed["kid"], ring.signer().ed25519_kid());
        let es = keys.iter().find(|k| k["kty"] == "EC").unwrap();
        assert_eq!(es["crv"], "P-256");
        assert_eq!(es["alg"], "ES256");
        assert_eq!(es["use"], "sig");
        assert_eq!(es["kid"], ring.signer().es256_kid());
        assert_eq!(URL_SAFE_NO_PAD.decode(es["x"].as_str().unwrap()).unwrap().len(), 32);
        assert_eq!(URL_SAFE_NO_PAD.decode(es["y"].as_str().unwrap()).unwrap().len(), 32);
        assert!(es.get("d").is_none() && ed.get("d").is_none());
        assert_eq!(verify::ed25519_public_keys(&jwks), vec![ring.standard_webhooks_public_key()]);
        // No secret text appears in the published document.
        let text = jwks.to_string();
        for record in ring.records() {
            assert!(!text.contains(&record.secret));
        }
    }

    #[test]
    fn rotation_keeps_old_keys_published_until_pruned() {
        let mut ring = KeyRing::generate(NOW);
        let old_signer = ring.signer();
        let body = rabo_body();
        let old_jws = old_signer.detached_jws(&body);
        let old_sig = old_signer.standard_webhooks_signature("msg_1", NOW, &body);
        let old_pk = ring.standard_webhooks_public_key();

        let rotated_at = NOW + 100;
        ring.rotate(rotated_at);
        assert_eq!(ring.records().len(), 4);
        let new_signer = ring.signer();
        assert_ne!(new_signer.es256_kid(), old_signer.es256_kid());
        assert_ne!(new_signer.ed25519_kid(), old_signer.ed25519_kid());
        assert_ne!(ring.standard_webhooks_public_key(), old_pk);
        let retired: Vec<KeyRecord> =
            ring.records().iter().filter(|r| r.retired_at.is_some()).cloned().collect();
        assert_eq!(retired.len(), 2);
        assert!(retired.iter().all(|r| r.retired_at == Some(rotated_at)));

        // Within the keep window the old JWS still verifies; new keys are listed first.
        let jwks = ring.jwks(rotated_at + KEEP - 1, KEEP);
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 4);
        assert_eq!(jwks["keys"][0]["kid"], new_signer.ed25519_kid());
        assert_eq!(jwks["keys"][1]["kid"], new_signer.es256_kid());
        verify::detached_jws(&jwks, &old_jws, &body).unwrap();
        let new_jws = new_signer.detached_jws(&body);
        verify::detached_jws(&jwks, &new_jws, &body).unwrap();
        let published = verify::ed25519_public_keys(&jwks);
        assert_eq!(published, vec![ring.standard_webhooks_public_key(), old_pk.clone()]);
        let ts = NOW.to_string();
        assert!(published
            .iter()
            .any(|pk| verify::standard_webhooks(pk, "msg_1", &ts, &body, &old_sig).is_ok()));

        // Nothing to prune yet.
        assert_eq!(ring.prune(rotated_at + KEEP - 1, KEEP), 0);
        // At the end of the window the JWKS no longer lists them, and prune drops them.
        let jwks_after = ring.jwks(rotated_at + KEEP, KEEP);
        assert_eq!(jwks_after["keys"].as_array().unwrap().len(), 2);
        assert!(matches!(
            verify::detached_jws(&jwks_after, &old_jws, &body),
            Err(SigningError::UnknownKid(_))
        ));
        assert_eq!(ring.prune(rotated_at + KEEP, KEEP), 2);
        assert_eq!(ring.records().len(), 2);
        assert!(ring.records().iter().all(|r| r.retired_at.is_none()));
        let jwks_pruned = ring.jwks(0, 0);
        assert!(matches!(
            verify::detached_jws(&jwks_pruned, &old_jws, &body),
            Err(SigningError::UnknownKid(_))
        ));
        verify::detached_jws(&jwks_pruned, &new_jws, &body).unwrap();
        // The old signer clone still works with its own (now unpublished) keys, and the ring survives a reload.
        assert_eq!(old_signer.es256_kid(), retired[1].kid);
        let reloaded = KeyRing::from_records(ring.records().to_vec()).unwrap();
        assert_eq!(reloaded.signer().es256_kid(), new_signer.es256_kid());
    }

    #[test]
    fn extreme_times_do_not_panic() {
        let mut ring = KeyRing::generate(i64::MIN);
        ring.rotate(i64::MAX);
        ring.rotate(i64::MIN);
        let _ = ring.jwks(i64::MAX, i64::MAX);
        let _ = ring.jwks(i64::MIN, i64::MIN);
        assert_eq!(ring.prune(i64::MIN, i64::MAX), 0);
        assert_eq!(ring.prune(i64::MAX, i64::MIN), 4);
        assert_eq!(ring.records().len(), 2);
        let _ = ring.signer().standard_webhooks_signature("", i64::MIN, b"");
    }

    #[test]
    fn from_records_round_trips() {
        let mut ring = KeyRing::generate(NOW);
        ring.rotate(NOW + 10);
        let stored = serde_json::to_string(ring.records()).unwrap();
        let records: Vec<KeyRecord> = serde_json::from_str(&stored).unwrap();
        assert!(stored.contains(r#""alg":"ed25519""#) && stored.contains(r#""alg":"es256""#));
        let reloaded = KeyRing::from_records(records).unwrap();
        assert_eq!(reloaded.records().len(), 4);
        let (a, b) = (ring.signer(), reloaded.signer());
        assert_eq!(a.ed25519_kid(), b.ed25519_kid());
        assert_eq!(a.es256_kid(), b.es256_kid());
        assert_eq!(ring.standard_webhooks_public_key(), reloaded.standard_webhooks_public_key());
        assert_eq!(ring.jwks(NOW, KEEP), reloaded.jwks(NOW, KEEP));

        let body = rabo_body();
        // Ed25519 is deterministic: identical signatures.
        assert_eq!(
            a.standard_webhooks_signature("m", NOW, &body),
            b.standard_webhooks_signature("m", NOW, &body)
        );
        let sig = b.standard_webhooks_signature("m", NOW, &body);
        verify::standard_webhooks(&ring.standard_webhooks_public_key(), "m", &NOW.to_string(), &body, &sig)
            .unwrap();
        // JWS from either verifies against either JWKS.
        verify::detached_jws(&ring.jwks(NOW, KEEP), &b.detached_jws(&body), &body).unwrap();
        verify::detached_jws(&reloaded.jwks(NOW, KEEP), &a.detached_jws(&body), &body).unwrap();
    }

    #[test]
    fn from_records_rejects_bad_sets() {
        let ring = KeyRing::generate(NOW);
        let good = ring.records().to_vec();
        let check = |records: Vec<KeyRecord>| {
            let err = KeyRing::from_records(records).unwrap_err();
            // Errors never leak secrets.
            for r in &good {
                assert!(!err.to_string().contains(&r.secret));
            }
            err
        };
        assert!(matches!(check(vec![]), SigningError::InvalidKeyRing(_)));
        assert!(matches!(check(vec![good[0].clone()]), SigningError::InvalidKeyRing(_)));
        assert!(matches!(check(vec![good[1].clone()]), SigningError::InvalidKeyRing(_)));

        let mut dup = good.clone();
        dup[1].kid = dup[0].kid.clone();
        assert!(matches!(check(dup), SigningError::InvalidKeyRing(_)));

        let mut empty_kid = good.clone();
        empty_kid[0].kid.clear();
        assert!(matches!(check(empty_kid), SigningError::InvalidKeyRing(_)));

        let other = KeyRing::generate(NOW);
        let mut two_active = good.clone();
        two_active.push(other.records()[0].clone());
        assert!(matches!(check(two_active), SigningError::InvalidKeyRing(_)));

        let mut all_retired = good.clone();
        all_retired[1].retired_at = Some(NOW);
        assert!(matches!(check(all_retired), SigningError::InvalidKeyRing(_)));

        let ed_secret = good[0].secret.clone();
        let es_secret = good[1].secret.clone();
        let bad_ed = [
            String::new(),
            "whsk_".to_string(),
            "whsk_%%%".to_string(),
            format!("whsk_{}", STANDARD.encode([1u8; 31])),
            format!("whsk_{}", STANDARD.encode([1u8; 64])),
            ed_secret[5..].to_string(),
            es_secret.clone(),
        ];
        for secret in bad_ed {
            let mut records = good.clone();
            records[0].secret = secret;
            assert!(matches!(check(records), SigningError::InvalidKey(_)));
        }
        let bad_es = [
            String::new(),
            "%%%".to_string(),
            format!("{es_secret}="),
            URL_SAFE_NO_PAD.encode([0u8; 32]),
            URL_SAFE_NO_PAD.encode([0xffu8; 32]),
            URL_SAFE_NO_PAD.encode([1u8; 31]),
            URL_SAFE_NO_PAD.encode([1u8; 33]),
            ed_secret.clone(),
        ];
        for secret in bad_es {
            let mut records = good.clone();
            records[1].secret = secret;
            assert!(matches!(check(records), SigningError::InvalidKey(_)));
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let mut ring = KeyRing::generate(NOW);
        ring.rotate(NOW + 1);
        let ring_debug = format!("{ring:?} {:?}", ring.signer());
        for record in ring.records() {
            let debug = format!("{record:?}");
            assert!(debug.contains(&record.kid));
            assert!(debug.contains("<redacted>"));
            assert!(!debug.contains(&record.secret), "{debug}");
            assert!(!ring_debug.contains(&record.secret));
        }
    }
}
