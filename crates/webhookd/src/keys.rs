//! Signing keys: given in the configuration (the same on every replica), or generated on first
//! start into the data dir and rotated there by the CLI.
//!
//! Keys from the configuration make a ring that is a function of `[signing]` only: kids are
//! derived from the secrets, the order is the configuration's, and retired keys carry a fixed
//! retirement time instead of a clock reading, so every replica given the same configuration
//! publishes byte-identical JWKS. A retired key from the configuration stays published for as
//! long as it is configured (see [`CONFIGURED_RETIRED_AT`]); the operator removes it after
//! `signing.retired_key_publish_hours` (docs/operations.md, "Signing keys for several replicas").

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use webhookd_core::signing::{KeyAlg, KeyRecord, KeyRing, SigningError};

use crate::config::{env_name, SigningSettings};

/// `retired_at` of every retired key from the configuration.
///
/// Not a time: such a key is published for exactly as long as it is configured. Its retirement
/// time cannot come from a replica's clock or start time, or replicas with the same
/// configuration would publish different JWKS and every restart would restart the window.
/// `KeyRing::jwks` publishes a retired key while `retired_at + keep > now`, which this value
/// satisfies at any time; as all configured retired keys share it, the JWKS lists them in the
/// configuration's order, after the active pair.
pub const CONFIGURED_RETIRED_AT: i64 = i64::MAX;

/// The longest `signing.retired_key_publish_hours` accepted (100 years).
pub const MAX_RETIRED_KEY_PUBLISH_HOURS: u64 = 876_000;

/// The configuration keys of the secrets, per algorithm: (algorithm, active key, retired list).
const SECRET_KEYS: [(KeyAlg, &str, &str); 2] = [
    (KeyAlg::Ed25519, "signing.ed25519_secret", "signing.retired_ed25519_secrets"),
    (KeyAlg::Es256, "signing.es256_secret", "signing.retired_es256_secrets"),
];

/// The key file inside the data dir.
pub fn key_file(data_dir: &Path) -> PathBuf {
    data_dir.join("signing-keys.json")
}

/// `settings` with the secrets of `signing.secrets_file` in place, when one is given. Errors
/// name the file and the key, never a secret (TOML's own messages quote the line, so only
/// its line number is said).
pub fn with_secrets_file(settings: &SigningSettings) -> anyhow::Result<SigningSettings> {
    let name = settings.secrets_file.trim();
    if name.is_empty() {
        return Ok(settings.clone());
    }
    if given(&settings.ed25519_secret)
        || given(&settings.es256_secret)
        || !settings.retired_ed25519_secrets.is_empty()
        || !settings.retired_es256_secrets.is_empty()
    {
        bail!("signing.secrets_file and the secrets in [signing] exclude each other: give the keys in one place");
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct SecretsFile {
        signing: Secrets,
    }
    #[derive(serde::Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Secrets {
        ed25519_secret: String,
        es256_secret: String,
        retired_ed25519_secrets: Vec<String>,
        retired_es256_secrets: Vec<String>,
    }
    let text =
        std::fs::read_to_string(name).with_context(|| format!("cannot read signing.secrets_file {name}"))?;
    let file: SecretsFile = toml::from_str(&text).map_err(|e| {
        // Newlines before the error's offset, counted in bytes (no slicing of the text).
        let line = e
            .span()
            .map(|s| text.as_bytes()[..s.start.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1);
        anyhow!(
            "signing.secrets_file {name} is not a [signing] table of ed25519_secret, es256_secret, \
             retired_ed25519_secrets and retired_es256_secrets (as `webhookd keys generate --format toml` \
             prints){}",
            line.map(|l| format!("; see line {l}")).unwrap_or_default()
        )
    })?;
    let merged = SigningSettings {
        ed25519_secret: file.signing.ed25519_secret,
        es256_secret: file.signing.es256_secret,
        retired_ed25519_secrets: file.signing.retired_ed25519_secrets,
        retired_es256_secrets: file.signing.retired_es256_secrets,
        ..settings.clone()
    };
    validate(&merged).with_context(|| format!("the keys in signing.secrets_file {name}"))?;
    if !is_configured(&merged) {
        bail!("signing.secrets_file {name} gives no keys: ed25519_secret and es256_secret are required");
    }
    Ok(merged)
}

/// Where a replica's keys come from, read again when they may have changed: the configuration's
/// `signing.secrets_file`, or the data dir's key file (rotated by `webhookd keys rotate`). Keys
/// given inline in `[signing]` (or its variables) cannot change while the process runs.
#[derive(Clone, Debug)]
pub struct KeySource {
    settings: SigningSettings,
    data_dir: PathBuf,
}

impl KeySource {
    /// The source `settings` and `data_dir` describe.
    pub fn new(settings: &SigningSettings, data_dir: &Path) -> KeySource {
        KeySource { settings: settings.clone(), data_dir: data_dir.to_path_buf() }
    }

    /// The file whose changes change the keys, if any.
    pub fn watched(&self) -> Option<PathBuf> {
        if !self.settings.secrets_file.trim().is_empty() {
            Some(PathBuf::from(self.settings.secrets_file.trim()))
        } else if is_configured(&self.settings) {
            None
        } else {
            Some(key_file(&self.data_dir))
        }
    }

    /// The keys as the source holds them now (generated and saved on a first start).
    pub fn load(&self, now: i64) -> anyhow::Result<KeyRing> {
        load_or_create(&self.data_dir, &self.settings, now)
    }

    /// The keys as the source holds them now, for a reload: never generated (a key file gone
    /// missing is an error, and the keys in use stay).
    pub fn reload(&self) -> anyhow::Result<KeyRing> {
        let settings = with_secrets_file(&self.settings)?;
        match configured_ring(&settings)? {
            Some(ring) => Ok(ring),
            None => load(&key_file(&self.data_dir)),
        }
    }
}

/// The keys to sign with: from the configuration (or its `signing.secrets_file`) when given
/// there, else from the data dir, generated (and saved) on first start.
pub fn load_or_create(data_dir: &Path, settings: &SigningSettings, now: i64) -> anyhow::Result<KeyRing> {
    let settings = &with_secrets_file(settings)?;
    if let Some(ring) = configured_ring(settings)? {
        let retired = settings.retired_ed25519_secrets.len() + settings.retired_es256_secrets.len();
        if retired > 0 {
            tracing::info!(
                retired,
                "retired signing keys from the configuration are published (never used to sign) until they \
                 are removed from it, which is due signing.retired_key_publish_hours after the rotation"
            );
        }
        return Ok(ring);
    }
    let path = key_file(data_dir);
    if path.exists() {
        return load(&path);
    }
    let ring = KeyRing::generate(now);
    save(&path, &ring)?;
    tracing::info!(path = %path.display(), "generated new signing keys");
    Ok(ring)
}

/// Reads the key file.
pub fn load(path: &Path) -> anyhow::Result<KeyRing> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let records: Vec<KeyRecord> =
        serde_json::from_slice(&text).with_context(|| format!("{} is not a key file", path.display()))?;
    KeyRing::from_records(records).with_context(|| format!("keys in {}", path.display()))
}

/// Writes the key file atomically (temp file, fsync, rename), readable by the owner only.
pub fn save(path: &Path, ring: &KeyRing) -> anyhow::Result<()> {
    let dir = path.parent().context("key file has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = path.with_extension("json.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(&serde_json::to_vec_pretty(ring.records())?)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Whether the keys come from the configuration (`signing.ed25519_secret` is given).
pub fn is_configured(settings: &SigningSettings) -> bool {
    given(&settings.ed25519_secret)
}

fn given(secret: &str) -> bool {
    !secret.trim().is_empty()
}

/// The ring given in the configuration, or `None` when it gives no keys (then the data dir's
/// are used). The active pair signs; the retired keys are only published. Deterministic: the
/// same settings give the same kids, order and JWKS on every replica, at any time.
pub fn configured_ring(settings: &SigningSettings) -> anyhow::Result<Option<KeyRing>> {
    validate(settings)?;
    if !is_configured(settings) {
        return Ok(None);
    }
    let mut records = vec![
        configured(KeyAlg::Ed25519, &settings.ed25519_secret, None),
        configured(KeyAlg::Es256, &settings.es256_secret, None),
    ];
    for (alg, list) in [
        (KeyAlg::Ed25519, &settings.retired_ed25519_secrets),
        (KeyAlg::Es256, &settings.retired_es256_secrets),
    ] {
        records.extend(list.iter().map(|secret| configured(alg, secret, Some(CONFIGURED_RETIRED_AT))));
    }
    let ring = KeyRing::from_records(records).context("signing keys in the configuration ([signing])")?;
    Ok(Some(ring))
}

/// Checks `[signing]`: every secret well-formed, the active pair given together, retired keys
/// only next to an active pair and neither repeated nor equal to the active key. Errors name
/// the configuration key and never contain a secret.
pub fn validate(settings: &SigningSettings) -> anyhow::Result<()> {
    if settings.retired_key_publish_hours > MAX_RETIRED_KEY_PUBLISH_HOURS {
        bail!(
            "signing.retired_key_publish_hours must be at most {MAX_RETIRED_KEY_PUBLISH_HOURS} (100 years)"
        );
    }
    let active = is_configured(settings);
    if active != given(&settings.es256_secret) {
        bail!(
            "signing.ed25519_secret and signing.es256_secret must be given together \
             (`webhookd keys generate` prints both)"
        );
    }
    if !active {
        if !settings.retired_ed25519_secrets.is_empty() || !settings.retired_es256_secrets.is_empty() {
            bail!(
                "signing.retired_ed25519_secrets and signing.retired_es256_secrets need the active keys \
                 signing.ed25519_secret and signing.es256_secret: retired keys are only published, never \
                 used to sign"
            );
        }
        return Ok(());
    }
    for (alg, active_key, list_key) in SECRET_KEYS {
        let (active, list) = match alg {
            KeyAlg::Ed25519 => (&settings.ed25519_secret, &settings.retired_ed25519_secrets),
            KeyAlg::Es256 => (&settings.es256_secret, &settings.retired_es256_secrets),
        };
        check_secret(alg, active).map_err(|why| anyhow!("{active_key}: {why}"))?;
        for (i, secret) in list.iter().enumerate() {
            check_secret(alg, secret).map_err(|why| anyhow!("{list_key}[{i}]: {why}"))?;
            if secret.trim() == active.trim() {
                bail!(
                    "{list_key}[{i}] is the active key {active_key}: a key is either active or retired \
                     (to rotate, put the new key in {active_key} and the old one in {list_key})"
                );
            }
            if let Some(j) = list[..i].iter().position(|other| other.trim() == secret.trim()) {
                bail!("{list_key}[{i}] is the same key as {list_key}[{j}]: list each retired key once");
            }
        }
    }
    Ok(())
}

/// Why `secret` is not a valid secret of `alg`, if it is not.
fn check_secret(alg: KeyAlg, secret: &str) -> Result<(), String> {
    let secret = secret.trim();
    if secret.is_empty() {
        return Err("is empty".into());
    }
    if alg == KeyAlg::Es256 && secret.starts_with("whsk_") {
        return Err("this is an Ed25519 secret (whsk_...), not an ES256 one".into());
    }
    // `KeyRing::from_records` parses every secret before it checks that each algorithm has an
    // active key, so a ring of this one record fails with `InvalidKey` exactly when the secret
    // is malformed (its message: `key "<kid>": <why>`, never the secret).
    match KeyRing::from_records(vec![configured(alg, secret, None)]) {
        Err(SigningError::InvalidKey(why)) => {
            Err(why.split_once(": ").map(|(_, why)| why.to_string()).unwrap_or(why))
        }
        _ => Ok(()),
    }
}

/// The kid of a key given in the configuration: derived from the secret, so that a new secret
/// gets a new kid (receivers cache keys by kid), the same on every replica and across a
/// rotation (a retired key keeps the kid it signed with), without revealing anything of it.
pub fn configured_kid(alg: KeyAlg, secret: &str) -> String {
    let digest =
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, secret.trim().as_bytes()).simple().to_string();
    let prefix = match alg {
        KeyAlg::Ed25519 => "ed25519",
        KeyAlg::Es256 => "es256",
    };
    format!("{prefix}-cfg{}", &digest[..12])
}

/// A key given in the configuration. Nothing in it comes from the clock (`created_at` is 0,
/// unknown), so the ring is a function of the configuration only.
fn configured(alg: KeyAlg, secret: &str, retired_at: Option<i64>) -> KeyRecord {
    KeyRecord {
        kid: configured_kid(alg, secret),
        alg,
        secret: secret.trim().to_string(),
        created_at: 0,
        retired_at,
    }
}

/// How `webhookd keys generate` prints a key set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigFormat {
    /// A `[signing]` section for a configuration file.
    Toml,
    /// `WEBHOOKD_SIGNING_...=...` lines (an env file, e.g. `kubectl create secret --from-env-file`).
    Env,
}

/// A fresh key set for the configuration (`webhookd keys generate`); nothing is written anywhere.
pub struct NewKeys {
    /// For `signing.ed25519_secret`: `whsk_...`.
    pub ed25519_secret: String,
    /// For `signing.es256_secret`: the base64url P-256 scalar.
    pub es256_secret: String,
}

impl std::fmt::Debug for NewKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKeys")
            .field("ed25519_kid", &self.ed25519_kid())
            .field("es256_kid", &self.es256_kid())
            .finish()
    }
}

impl NewKeys {
    /// Generates a new Ed25519 and ES256 key.
    pub fn generate() -> NewKeys {
        let ring = KeyRing::generate(0);
        let secret =
            |alg| ring.records().iter().find(|r| r.alg == alg).map(|r| r.secret.clone()).unwrap_or_default();
        NewKeys { ed25519_secret: secret(KeyAlg::Ed25519), es256_secret: secret(KeyAlg::Es256) }
    }

    /// The kid the Ed25519 key gets once configured.
    pub fn ed25519_kid(&self) -> String {
        configured_kid(KeyAlg::Ed25519, &self.ed25519_secret)
    }

    /// The kid the ES256 key gets once configured.
    pub fn es256_kid(&self) -> String {
        configured_kid(KeyAlg::Es256, &self.es256_secret)
    }

    /// The configuration lines that give these keys as the active pair.
    pub fn to_config(&self, format: ConfigFormat) -> String {
        let [(_, ed_key, _), (_, es_key, _)] = SECRET_KEYS;
        let pairs = [(ed_key, &self.ed25519_secret), (es_key, &self.es256_secret)];
        match format {
            ConfigFormat::Toml => {
                let mut out = String::from("[signing]\n");
                for (key, secret) in pairs {
                    let name = key.trim_start_matches("signing.");
                    // Base64 text needs no escaping in a TOML basic string.
                    out.push_str(&format!("{name} = \"{secret}\"\n"));
                }
                out
            }
            ConfigFormat::Env => {
                pairs.iter().map(|(key, secret)| format!("{}={secret}\n", env_name(key))).collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use webhookd_core::signing::verify;

    use super::*;

    fn no_config() -> SigningSettings {
        settings(&NewKeys { ed25519_secret: String::new(), es256_secret: String::new() }, &[])
    }

    /// `active` as the active pair, `retired` as the retired keys, in order.
    fn settings(active: &NewKeys, retired: &[&NewKeys]) -> SigningSettings {
        SigningSettings {
            retired_key_publish_hours: 1,
            ed25519_secret: active.ed25519_secret.clone(),
            es256_secret: active.es256_secret.clone(),
            retired_ed25519_secrets: retired.iter().map(|k| k.ed25519_secret.clone()).collect(),
            retired_es256_secrets: retired.iter().map(|k| k.es256_secret.clone()).collect(),
            secrets_file: String::new(),
            reload_check_ms: 0,
        }
    }

    fn kids(jwks: &serde_json::Value) -> Vec<String> {
        jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_string()).collect()
    }

    #[test]
    fn a_secrets_file_gives_the_keys_and_its_errors_name_it_never_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("signing.toml");
        let (active, old) = (NewKeys::generate(), NewKeys::generate());
        std::fs::write(
            &file,
            format!(
                "[signing]\ned25519_secret = \"{}\"\nes256_secret = \"{}\"\nretired_ed25519_secrets = [\"{}\"]\n\
                 retired_es256_secrets = [\"{}\"]\n",
                active.ed25519_secret, active.es256_secret, old.ed25519_secret, old.es256_secret
            ),
        )
        .unwrap();
        let settings = SigningSettings { secrets_file: file.display().to_string(), ..no_config() };
        let source = KeySource::new(&settings, dir.path());
        assert_eq!(source.watched(), Some(file.clone()));
        let ring = source.reload().unwrap();
        assert_eq!(
            kids(&ring.jwks(0, 1)),
            [active.ed25519_kid(), active.es256_kid(), old.ed25519_kid(), old.es256_kid()]
        );
        assert!(!dir.path().join("signing-keys.json").exists(), "configured keys are never written");

        // Not TOML, a secret in the wrong place, both places: each error names the file or key.
        let secret = active.ed25519_secret.clone();
        for (text, expected) in [
            (format!("[signing]\ned25519_secret = \"{secret}"), "see line 2"),
            (format!("[signing]\nunknown = \"{secret}\"\n"), "see line 2"),
            (
                format!("[signing]\ned25519_secret = \"{secret}\"\nes256_secret = \"{secret}\"\n"),
                "signing.es256_secret",
            ),
            ("[signing]\n".to_string(), "gives no keys"),
            (format!("[signing]\nunknown = \"{secret}\"\n"), "is not a [signing] table"),
        ] {
            std::fs::write(&file, &text).unwrap();
            let e = format!("{:#}", source.reload().unwrap_err());
            assert!(e.contains(expected), "{e}");
            assert!(!e.contains(&secret), "a secret in an error: {e}");
        }
        let both = SigningSettings { ed25519_secret: secret.clone(), ..settings.clone() };
        assert!(with_secrets_file(&both).unwrap_err().to_string().contains("exclude each other"));
        std::fs::remove_file(&file).unwrap();
        assert!(format!("{:#}", source.reload().unwrap_err()).contains("cannot read signing.secrets_file"));
    }

    #[test]
    fn generated_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path(), &no_config(), 1).unwrap();
        let b = load_or_create(dir.path(), &no_config(), 2).unwrap();
        assert_eq!(a.standard_webhooks_public_key(), b.standard_webhooks_public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(key_file(dir.path())).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn configured_keys_win() {
        let dir = tempfile::tempdir().unwrap();
        let generated = KeyRing::generate(1);
        let secret = |alg| generated.records().iter().find(|r| r.alg == alg).unwrap().secret.clone();
        let keys = NewKeys { ed25519_secret: secret(KeyAlg::Ed25519), es256_secret: secret(KeyAlg::Es256) };
        let ring = load_or_create(dir.path(), &settings(&keys, &[]), 1).unwrap();
        assert_eq!(ring.standard_webhooks_public_key(), generated.standard_webhooks_public_key());
        assert!(!key_file(dir.path()).exists());
    }

    #[test]
    fn configured_ring_is_a_function_of_the_configuration_only() {
        let (old, new) = (NewKeys::generate(), NewKeys::generate());
        let config = settings(&new, &[&old]);
        // Two replicas: own data dirs, started at different times, asked at different times.
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = load_or_create(dir_a.path(), &config, 1_700_000_000).unwrap();
        let b = load_or_create(dir_b.path(), &config, 1_800_000_000).unwrap();
        let keep = 3600;
        let served_a = serde_json::to_vec(&a.jwks(1_700_000_000, keep)).unwrap();
        for (now, keep) in [(1_800_000_000, keep), (4_000_000_000, keep), (0, 0), (i64::MAX - 1, i64::MAX)] {
            assert_eq!(served_a, serde_json::to_vec(&b.jwks(now, keep)).unwrap(), "at {now}");
        }
        assert_eq!(a.records().len(), 4);
        assert!(a.records().iter().all(|r| r.created_at == 0));
        assert!(!key_file(dir_a.path()).exists() && !key_file(dir_b.path()).exists());
        // Kids depend on the secrets only: the order is active then retired, as configured.
        let jwks = a.jwks(0, 0);
        assert_eq!(kids(&jwks), [new.ed25519_kid(), new.es256_kid(), old.ed25519_kid(), old.es256_kid()]);
        assert_eq!(
            (a.signer().ed25519_kid(), a.signer().es256_kid()),
            (&*new.ed25519_kid(), &*new.es256_kid())
        );
    }

    #[test]
    fn rotation_in_the_configuration_keeps_the_old_public_keys_and_signs_with_the_new() {
        let (old, new, older) = (NewKeys::generate(), NewKeys::generate(), NewKeys::generate());
        let before = configured_ring(&settings(&old, &[])).unwrap().unwrap();
        let body = br#"{"id":"1"}"#;
        let old_jws = before.signer().detached_jws(body);
        let old_sig = before.signer().standard_webhooks_signature("msg_1", 1, body);
        let old_jwks = before.jwks(0, 0);
        assert_eq!(kids(&old_jwks), [old.ed25519_kid(), old.es256_kid()]);

        // Step 1: the new pair is active, the old one retired (and two retired pairs are fine).
        let during = configured_ring(&settings(&new, &[&old, &older])).unwrap().unwrap();
        let jwks = during.jwks(0, 0);
        assert_eq!(
            kids(&jwks),
            [
                new.ed25519_kid(),
                new.es256_kid(),
                old.ed25519_kid(),
                older.ed25519_kid(),
                old.es256_kid(),
                older.es256_kid()
            ]
        );
        // The retired keys keep their kids and public keys: what the old pair signed verifies.
        for key in old_jwks["keys"].as_array().unwrap() {
            assert!(jwks["keys"].as_array().unwrap().contains(key), "{key} still published as it was");
        }
        verify::detached_jws(&jwks, &old_jws, body).unwrap();
        let published = verify::ed25519_public_keys(&jwks);
        assert_eq!(published.len(), 3);
        assert!(published
            .iter()
            .any(|pk| verify::standard_webhooks(pk, "msg_1", "1", body, &old_sig).is_ok()));
        // New deliveries are signed with the new pair only.
        let signer = during.signer();
        assert_eq!((signer.ed25519_kid(), signer.es256_kid()), (&*new.ed25519_kid(), &*new.es256_kid()));
        let new_jws = signer.detached_jws(body);
        verify::detached_jws(&jwks, &new_jws, body).unwrap();
        assert!(verify::detached_jws(&old_jwks, &new_jws, body).is_err(), "not signed with the old key");
        let new_sig = signer.standard_webhooks_signature("msg_2", 2, body);
        verify::standard_webhooks(&during.standard_webhooks_public_key(), "msg_2", "2", body, &new_sig)
            .unwrap();
        assert_eq!(during.standard_webhooks_public_key(), verify::ed25519_public_keys(&jwks)[0]);

        // Step 2: the retired keys are removed from the configuration, and from the JWKS.
        let after = configured_ring(&settings(&new, &[])).unwrap().unwrap();
        assert_eq!(kids(&after.jwks(0, 0)), [new.ed25519_kid(), new.es256_kid()]);
        assert!(matches!(
            verify::detached_jws(&after.jwks(0, 0), &old_jws, body),
            Err(SigningError::UnknownKid(_))
        ));
    }

    #[test]
    fn invalid_settings_are_named_and_never_shown() {
        let (a, b) = (NewKeys::generate(), NewKeys::generate());
        let secrets = [&a.ed25519_secret, &a.es256_secret, &b.ed25519_secret, &b.es256_secret];
        let err = |s: SigningSettings| {
            let e = format!("{:#}", validate(&s).unwrap_err());
            assert!(secrets.iter().all(|secret| !e.contains(secret.as_str())), "{e}");
            assert!(configured_ring(&s).is_err());
            e
        };
        let mut s = settings(&a, &[]);
        s.es256_secret.clear();
        assert!(err(s).contains("must be given together"));
        let mut s = settings(&a, &[]);
        s.ed25519_secret = " ".into();
        assert!(err(s).contains("must be given together"));
        let mut s = settings(&b, &[&a]);
        (s.ed25519_secret, s.es256_secret) = (String::new(), String::new());
        assert!(err(s).contains("need the active keys"));

        let mut s = settings(&a, &[]);
        s.ed25519_secret = a.ed25519_secret.trim_start_matches("whsk_").into();
        let e = err(s);
        assert!(e.starts_with("signing.ed25519_secret: ") && e.contains("whsk_"), "{e}");
        let mut s = settings(&a, &[]);
        s.ed25519_secret = "whsk_AAAA".into();
        assert!(err(s).contains("signing.ed25519_secret: ed25519 secret must be 32 bytes"));
        let mut s = settings(&a, &[]);
        s.es256_secret = "not base64!".into();
        assert!(err(s).starts_with("signing.es256_secret: "));
        let mut s = settings(&a, &[]);
        s.es256_secret = a.ed25519_secret.clone();
        assert!(err(s).contains("signing.es256_secret: this is an Ed25519 secret"));

        let mut s = settings(&a, &[&b]);
        s.retired_es256_secrets.push("AAAA".into());
        assert!(err(s).contains("signing.retired_es256_secrets[1]: es256 secret must be 32 bytes"));
        let mut s = settings(&a, &[&b]);
        s.retired_ed25519_secrets.insert(0, String::new());
        assert!(err(s).contains("signing.retired_ed25519_secrets[0]: is empty"));
        let s = settings(&a, &[&a]);
        let e = err(s);
        assert!(
            e.contains("signing.retired_ed25519_secrets[0] is the active key signing.ed25519_secret"),
            "{e}"
        );
        let mut s = settings(&a, &[&b]);
        s.retired_es256_secrets[0] = a.es256_secret.clone();
        assert!(err(s).contains("signing.retired_es256_secrets[0] is the active key signing.es256_secret"));
        let s = settings(&a, &[&b, &b]);
        assert!(err(s).contains(
            "signing.retired_ed25519_secrets[1] is the same key as signing.retired_ed25519_secrets[0]"
        ));
        let mut s = settings(&a, &[]);
        s.retired_key_publish_hours = MAX_RETIRED_KEY_PUBLISH_HOURS + 1;
        assert!(err(s).contains("signing.retired_key_publish_hours"));

        // Valid: nothing configured, an active pair, an active pair with retired keys of one kind only.
        validate(&no_config()).unwrap();
        validate(&settings(&a, &[])).unwrap();
        let mut s = settings(&a, &[&b]);
        s.retired_es256_secrets.clear();
        validate(&s).unwrap();
        assert_eq!(configured_ring(&s).unwrap().unwrap().jwks(0, 0)["keys"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn surrounding_whitespace_is_ignored() {
        // Secrets read from files (kubectl create secret --from-file) often end in a newline.
        let keys = NewKeys::generate();
        let padded = NewKeys {
            ed25519_secret: format!("{}\n", keys.ed25519_secret),
            es256_secret: format!(" {}\r\n", keys.es256_secret),
        };
        let a = configured_ring(&settings(&keys, &[])).unwrap().unwrap();
        let b = configured_ring(&settings(&padded, &[])).unwrap().unwrap();
        assert_eq!(serde_json::to_vec(&a.jwks(0, 0)).unwrap(), serde_json::to_vec(&b.jwks(0, 0)).unwrap());
        assert_eq!(padded.ed25519_kid(), keys.ed25519_kid());
        // A retired key that differs from the active one only by whitespace is the active key.
        let mut s = settings(&keys, &[]);
        s.retired_ed25519_secrets.push(padded.ed25519_secret.clone());
        assert!(validate(&s).is_err());
    }

    #[test]
    fn generated_keys_print_as_configuration_that_loads() {
        let keys = NewKeys::generate();
        let other = NewKeys::generate();
        assert_ne!(keys.ed25519_secret, other.ed25519_secret);
        assert_ne!(keys.es256_secret, other.es256_secret);
        assert!(keys.ed25519_secret.starts_with("whsk_"));
        assert!(!format!("{keys:?}").contains(&keys.ed25519_secret));
        assert!(!format!("{keys:?}").contains(&keys.es256_secret));
        let expected = configured_ring(&settings(&keys, &[])).unwrap().unwrap().jwks(0, 0);

        let toml = keys.to_config(ConfigFormat::Toml);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys.toml");
        std::fs::write(&file, &toml).unwrap();
        let from_file = crate::Config::load_with_env(Some(&file), Vec::<(String, String)>::new()).unwrap();
        let ring = configured_ring(&from_file.signing).unwrap().expect("keys from the file");
        assert_eq!(ring.jwks(0, 0), expected);

        let env = keys.to_config(ConfigFormat::Env);
        let vars: Vec<(String, String)> = env
            .lines()
            .map(|line| {
                let (k, v) = line.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect();
        assert_eq!(vars.len(), 2);
        assert_eq!(vars[0].0, "WEBHOOKD_SIGNING_ED25519_SECRET");
        assert_eq!(vars[1].0, "WEBHOOKD_SIGNING_ES256_SECRET");
        let from_env = crate::Config::load_with_env(None, vars).unwrap();
        let ring = configured_ring(&from_env.signing).unwrap().expect("keys from the environment");
        assert_eq!(ring.jwks(0, 0), expected);
        assert_eq!(kids(&expected), [keys.ed25519_kid(), keys.es256_kid()]);
    }
}
