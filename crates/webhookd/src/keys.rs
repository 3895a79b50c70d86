//! Signing keys on disk: generated on first start, kept in the data dir, rotated by the CLI.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use webhookd_core::signing::{KeyAlg, KeyRecord, KeyRing};

use crate::config::SigningSettings;

/// The key file inside the data dir.
pub fn key_file(data_dir: &Path) -> PathBuf {
    data_dir.join("signing-keys.json")
}

/// The keys to sign with: from the configuration when given there, else from the data dir,
/// generated (and saved) on first start.
pub fn load_or_create(data_dir: &Path, settings: &SigningSettings, now: i64) -> anyhow::Result<KeyRing> {
    if !settings.ed25519_secret.is_empty() {
        let records = vec![
            configured(KeyAlg::Ed25519, &settings.ed25519_secret, now),
            configured(KeyAlg::Es256, &settings.es256_secret, now),
        ];
        return KeyRing::from_records(records)
            .context("signing keys in the configuration (signing.*_secret)");
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

/// A key given in the configuration; its kid is derived from the secret so that a new secret
/// gets a new kid (receivers cache keys by kid) without revealing anything of it.
fn configured(alg: KeyAlg, secret: &str, now: i64) -> KeyRecord {
    let digest = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, secret.as_bytes()).simple().to_string();
    let prefix = match alg {
        KeyAlg::Ed25519 => "ed25519",
        KeyAlg::Es256 => "es256",
    };
    KeyRecord {
        kid: format!("{prefix}-cfg{}", &digest[..12]),
        alg,
        secret: secret.to_string(),
        created_at: now,
        retired_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_config() -> SigningSettings {
        SigningSettings {
            retired_key_publish_hours: 1,
            ed25519_secret: String::new(),
            es256_secret: String::new(),
        }
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
        let settings = SigningSettings {
            retired_key_publish_hours: 1,
            ed25519_secret: secret(KeyAlg::Ed25519),
            es256_secret: secret(KeyAlg::Es256),
        };
        let ring = load_or_create(dir.path(), &settings, 1).unwrap();
        assert_eq!(ring.standard_webhooks_public_key(), generated.standard_webhooks_public_key());
        assert!(!key_file(dir.path()).exists());
    }
}
