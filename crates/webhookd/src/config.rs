//! Configuration: embedded defaults, then a TOML file, then `WEBHOOKD_*` environment variables.
//!
//! The defaults file is the reference: every key it has can be set in a file or the
//! environment, a key it lacks is an error, and environment values are parsed by the type of
//! the default (lists are comma-separated).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use toml::{Table, Value};
use webhookd_api::{ObpSettings, RaboSettings};
use webhookd_catalog::CatalogSettings;
use webhookd_core::destination::DestinationPolicy;
use webhookd_core::retry::RetryPolicy;
use webhookd_delivery::DeliverySettings;
use webhookd_ingest::AmqpSettings;
use webhookd_store::StoreSettings;

use crate::maintenance::{AutoDisableSettings, MaintenanceSettings, RetentionSettings};

/// The embedded, commented default configuration.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// The prefix of the environment variables.
pub const ENV_PREFIX: &str = "WEBHOOKD_";

/// Where an effective configuration came from: the layers over the embedded defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigSource {
    /// The `--config` file, if one was given.
    pub file: Option<PathBuf>,
    /// The `WEBHOOKD_*` variables that set a key (names only: values may be secrets).
    pub variables: Vec<String>,
}

impl ConfigSource {
    /// The layers in one line, as `config show` and the admin API say them.
    pub fn describe(&self) -> String {
        let file = match &self.file {
            Some(path) => format!("the file {}", path.display()),
            None => "no file".to_string(),
        };
        let variables =
            if self.variables.is_empty() { "no variables".to_string() } else { self.variables.join(", ") };
        format!("embedded defaults, then {file}, then {variables}")
    }
}

/// The effective configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory of the store and the keys.
    pub data_dir: PathBuf,
    /// The store's memory.
    pub store: StoreSettings,
    /// Logging.
    pub log: LogSettings,
    /// The HTTP API.
    pub http: HttpSettings,
    /// Where events come from.
    pub amqp: AmqpSettings,
    /// The catalog log every replica applies.
    pub catalog: CatalogSettings,
    /// How deliveries are sent.
    pub delivery: DeliverySettings,
    /// How failed deliveries are retried.
    pub retry: RetryPolicy,
    /// Signing keys.
    pub signing: SigningSettings,
    /// The OBP API.
    pub obp: ObpSettings,
    /// The Rabo API.
    pub rabo: RaboSettings,
    /// Where subscriptions may point to.
    pub destinations: DestinationPolicy,
    /// Housekeeping schedule.
    pub maintenance: MaintenanceSettings,
    /// How long finished deliveries are kept.
    pub retention: RetentionSettings,
    /// Disabling subscriptions that only fail.
    pub auto_disable: AutoDisableSettings,
    /// Where the values came from (not a key: kept out of the TOML).
    #[serde(skip)]
    pub source: ConfigSource,
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// tracing env-filter directive.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

/// `[http]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Listen address.
    pub listen: String,
    /// The listener's certificate chain (PEM); with `tls_key_file`, the API is served over TLS.
    pub tls_cert_file: String,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub tls_key_file: String,
    /// How often the two files are checked for changes, milliseconds; 0: only on SIGHUP.
    pub tls_reload_check_ms: u64,
}

/// `[signing]`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningSettings {
    /// How long retired keys stay published, hours.
    pub retired_key_publish_hours: u64,
    /// Ed25519 secret (`whsk_...`), or empty.
    pub ed25519_secret: String,
    /// ES256 secret (base64url scalar), or empty.
    pub es256_secret: String,
    /// Retired Ed25519 secrets (`whsk_...`): published in the JWKS while configured, never used to sign.
    pub retired_ed25519_secrets: Vec<String>,
    /// Retired ES256 secrets (base64url scalars): published in the JWKS while configured, never used to sign.
    pub retired_es256_secrets: Vec<String>,
    /// A file holding the secrets above as a `[signing]` table (what `keys generate --format
    /// toml` prints), re-read when it changes; empty: none.
    pub secrets_file: String,
    /// How often the key source (`secrets_file`, or the data dir's key file) is checked for
    /// changes, milliseconds; 0: only on SIGHUP.
    pub reload_check_ms: u64,
}

impl std::fmt::Debug for SigningSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningSettings")
            .field("retired_key_publish_hours", &self.retired_key_publish_hours)
            .field("ed25519_secret", &mask(&self.ed25519_secret))
            .field("es256_secret", &mask(&self.es256_secret))
            .field("retired_ed25519_secrets", &mask_all(&self.retired_ed25519_secrets))
            .field("retired_es256_secrets", &mask_all(&self.retired_es256_secrets))
            .field("secrets_file", &self.secrets_file)
            .field("reload_check_ms", &self.reload_check_ms)
            .finish()
    }
}

impl Config {
    /// The broker of the catalog log: `catalog.url`, or `amqp.url` when that is empty.
    pub fn catalog_url(&self) -> String {
        match self.catalog.url.as_str() {
            "" => self.amqp.url.clone(),
            url => url.to_string(),
        }
    }

    /// The broker the delivery log follower reads from: `delivery.log_url`, or `amqp.url`.
    pub fn delivery_log_url(&self) -> String {
        match self.delivery.log_url.as_str() {
            "" => self.amqp.url.clone(),
            url => url.to_string(),
        }
    }

    /// Loads defaults, then `file`, then the process environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        Config::load_with_env(file, std::env::vars())
    }

    /// Loads defaults, then `file`, then the given environment.
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        let defaults: Table =
            DEFAULT_TOML.parse().context("the embedded default configuration does not parse")?;
        let mut merged = defaults.clone();
        if let Some(path) = file {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            let table: Table =
                text.parse().with_context(|| format!("{} is not valid TOML", path.display()))?;
            merge(&mut merged, table, "")?;
        }
        let env: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
        let mut variables = Vec::new();
        for (path, default) in leaves(&defaults, "") {
            let name = env_name(&path);
            if let Some((_, text)) = env.iter().find(|(k, _)| *k == name) {
                let value = parse_env(text, &default).map_err(|why| anyhow!("{name} (key {path}): {why}"))?;
                set(&mut merged, &path, value);
                variables.push(name);
            }
        }
        variables.sort_unstable();
        let mut config: Config = serde_path_to_error::deserialize(Value::Table(merged))
            .map_err(|e| anyhow!("invalid configuration key {}: {}", e.path(), e.inner().message()))?;
        config.source = ConfigSource { file: file.map(Path::to_path_buf), variables };
        config.validate()?;
        Ok(config)
    }

    /// Checks every section; the error names the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.data_dir.as_os_str().is_empty() {
            bail!("data_dir must not be empty");
        }
        self.http
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| anyhow!("http.listen must be an address like 127.0.0.1:8080: {e}"))?;
        if self.http.tls_cert_file.trim().is_empty() != self.http.tls_key_file.trim().is_empty() {
            bail!("http.tls_cert_file and http.tls_key_file must be given together (or neither, for plain HTTP)");
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            bail!("log.format must be \"text\" or \"json\"");
        }
        self.amqp.validate().map_err(|e| anyhow!(e))?;
        self.catalog.validate().map_err(|e| anyhow!(e))?;
        self.delivery.validate().map_err(|e| anyhow!(e))?;
        self.retry.validate().map_err(|e| anyhow!(e))?;
        self.destinations.validate().map_err(|e| anyhow!(e))?;
        if self.obp.banks.iter().any(|b| b.trim().is_empty()) {
            bail!("obp.banks must not contain empty bank ids");
        }
        if self.store.cache_mib == 0 {
            bail!("store.cache_mib must be at least 1");
        }
        if self.rabo.max_subscriptions_per_merchant == 0 {
            bail!("rabo.max_subscriptions_per_merchant must be at least 1");
        }
        crate::keys::validate(&self.signing)?;
        Ok(())
    }

    /// The configuration as TOML, with secrets masked.
    pub fn to_masked_toml(&self) -> String {
        let mut shown = self.clone();
        shown.amqp.url = mask_url_password(&shown.amqp.url);
        shown.catalog.url = mask_url_password(&shown.catalog.url);
        shown.delivery.log_url = mask_url_password(&shown.delivery.log_url);
        shown.delivery.proxy = mask_url_password(&shown.delivery.proxy);
        shown.signing.ed25519_secret = mask(&shown.signing.ed25519_secret);
        shown.signing.es256_secret = mask(&shown.signing.es256_secret);
        shown.signing.retired_ed25519_secrets = mask_all(&shown.signing.retired_ed25519_secrets);
        shown.signing.retired_es256_secrets = mask_all(&shown.signing.retired_es256_secrets);
        toml::to_string_pretty(&shown).unwrap_or_default()
    }
}

/// The environment variable of a key path.
pub fn env_name(path: &str) -> String {
    format!("{ENV_PREFIX}{}", path.replace('.', "_").to_ascii_uppercase())
}

fn mask(secret: &str) -> String {
    if secret.is_empty() {
        String::new()
    } else {
        "********".into()
    }
}

/// Every secret of a list masked (the count stays visible).
fn mask_all(secrets: &[String]) -> Vec<String> {
    secrets.iter().map(|s| mask(s)).collect()
}

/// `amqp://user:secret@host/` -> `amqp://user:********@host/`.
fn mask_url_password(url: &str) -> String {
    // A proxy may be given without a scheme (`user:password@host:port`), as curl reads it.
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let Some((credentials, host)) = rest.rsplit_once('@') else { return url.to_string() };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}{user}:********@{host}"),
        None => url.to_string(),
    }
}

/// Merges `overlay` into `base`; keys that the defaults do not have are errors.
fn merge(base: &mut Table, overlay: Table, prefix: &str) -> anyhow::Result<()> {
    for (key, value) in overlay {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match (base.get_mut(&key), value) {
            (None, _) => bail!("unknown configuration key {path}"),
            (Some(Value::Table(inner)), Value::Table(overlay)) => merge(inner, overlay, &path)?,
            (Some(Value::Table(_)), _) => bail!("configuration key {path} must be a section"),
            (Some(slot), value) => *slot = value,
        }
    }
    Ok(())
}

/// Every leaf (non-table value) with its dotted path.
fn leaves(table: &Table, prefix: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (key, value) in table {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match value {
            Value::Table(inner) => out.extend(leaves(inner, &path)),
            other => out.push((path, other.clone())),
        }
    }
    out
}

fn set(table: &mut Table, path: &str, value: Value) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let Some(last) = parts.pop() else { return };
    let mut current = table;
    for part in parts {
        let Some(Value::Table(inner)) = current.get_mut(part) else { return };
        current = inner;
    }
    current.insert(last.to_string(), value);
}

/// Parses an environment value by the type of the key's default.
fn parse_env(text: &str, default: &Value) -> Result<Value, String> {
    let text = text.trim();
    Ok(match default {
        Value::String(_) => Value::String(text.to_string()),
        Value::Integer(_) => Value::Integer(text.parse().map_err(|_| format!("{text:?} is not an integer"))?),
        Value::Float(_) => Value::Float(text.parse().map_err(|_| format!("{text:?} is not a number"))?),
        Value::Boolean(_) => Value::Boolean(match text.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => return Err(format!("{text:?} is not true or false")),
        }),
        Value::Array(_) => Value::Array(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        ),
        Value::Datetime(_) | Value::Table(_) => return Err("cannot be set from the environment".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_agree_with_the_code() {
        let c = Config::load_with_env(None, env(&[])).unwrap();
        assert_eq!(c.retry, RetryPolicy::default());
        assert_eq!(c.delivery, DeliverySettings::default());
        assert_eq!(c.amqp, AmqpSettings::default());
        assert_eq!(c.store, StoreSettings::default());
    }

    #[test]
    fn environment_overrides_files_which_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "data_dir = \"/from/file\"\n[amqp]\nprefetch = 7\nqueue = \"q-file\"\n")
            .unwrap();
        let c = Config::load_with_env(
            Some(&file),
            env(&[
                ("WEBHOOKD_AMQP_URL", "amqp://u:p@10.0.0.1:5673/%2f"),
                ("WEBHOOKD_HTTP_LISTEN", "0.0.0.0:9000"),
                ("WEBHOOKD_DATA_DIR", "/from/env"),
                ("WEBHOOKD_AMQP_BINDING_KEYS", "balance.changed, order.finalized"),
                ("WEBHOOKD_DELIVERY_TIME_SCALE", "1000"),
                ("WEBHOOKD_OBP_BANKS", "gh.29.uk, bank-2"),
                ("WEBHOOKD_DESTINATIONS_ALLOW", "127.0.0.1/32,10.0.0.0/8"),
                ("WEBHOOKD_UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/from/env"));
        assert_eq!(c.amqp.url, "amqp://u:p@10.0.0.1:5673/%2f");
        assert_eq!(c.http.listen, "0.0.0.0:9000");
        assert_eq!(c.amqp.prefetch, 7);
        assert_eq!(c.amqp.queue, "q-file");
        assert_eq!(c.amqp.binding_keys, ["balance.changed", "order.finalized"]);
        assert_eq!(c.delivery.time_scale, 1000.0);
        assert_eq!(c.obp.banks, ["gh.29.uk", "bank-2"]);
        assert_eq!(c.destinations.allow, ["127.0.0.1/32", "10.0.0.0/8"]);
    }

    #[test]
    fn errors_name_the_key() {
        let err = |pairs: &[(&str, &str)]| Config::load_with_env(None, env(pairs)).unwrap_err().to_string();
        assert!(err(&[("WEBHOOKD_AMQP_PREFETCH", "many")]).contains("amqp.prefetch"));
        assert!(err(&[("WEBHOOKD_HTTP_LISTEN", "nowhere")]).contains("http.listen"));
        assert!(err(&[("WEBHOOKD_AMQP_URL", "http://x")]).contains("amqp.url"));
        assert!(err(&[("WEBHOOKD_RETRY_FACTOR", "0.5")]).contains("retry.factor"));
        assert!(err(&[("WEBHOOKD_DELIVERY_MAX_IN_FLIGHT", "0")]).contains("delivery.max_in_flight"));
        assert!(err(&[("WEBHOOKD_SIGNING_ED25519_SECRET", "whsk_x")]).contains("signing."));
        assert!(err(&[("WEBHOOKD_DESTINATIONS_ALLOW", "10.0.0.0/99")]).contains("destinations.allow"));
        assert!(err(&[("WEBHOOKD_STORE_CACHE_MIB", "0")]).contains("store.cache_mib"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[amqp]\nprefech = 7\n").unwrap();
        let e = Config::load_with_env(Some(&file), env(&[])).unwrap_err().to_string();
        assert!(e.contains("amqp.prefech"), "{e}");
        std::fs::write(&file, "[amqp]\nprefetch = \"seven\"\n").unwrap();
        let e = Config::load_with_env(Some(&file), env(&[])).unwrap_err().to_string();
        assert!(e.contains("prefetch"), "{e}");
    }

    #[test]
    fn the_operations_guide_lists_every_key() {
        let guide = include_str!("../../../docs/operations.md");
        let defaults: Table = DEFAULT_TOML.parse().unwrap();
        for (path, _) in leaves(&defaults, "") {
            let row = format!("| `{path}` |");
            assert!(guide.contains(&row), "docs/operations.md lacks {path}");
            assert!(guide.contains(&env_name(&path)), "docs/operations.md lacks {}", env_name(&path));
        }
    }

    #[test]
    fn show_masks_secrets() {
        let (active, retired) = (crate::keys::NewKeys::generate(), crate::keys::NewKeys::generate());
        let c = Config::load_with_env(
            None,
            env(&[
                ("WEBHOOKD_AMQP_URL", "amqp://app:s3cret@mq:5672/%2f"),
                ("WEBHOOKD_DELIVERY_PROXY", "egress:pr0xypw@proxy.bank:3128"),
                ("WEBHOOKD_SIGNING_ED25519_SECRET", &active.ed25519_secret),
                ("WEBHOOKD_SIGNING_ES256_SECRET", &active.es256_secret),
                ("WEBHOOKD_SIGNING_RETIRED_ED25519_SECRETS", &retired.ed25519_secret),
                ("WEBHOOKD_SIGNING_RETIRED_ES256_SECRETS", &retired.es256_secret),
            ]),
        )
        .unwrap();
        assert_eq!(c.signing.retired_ed25519_secrets.len(), 1);
        assert_eq!(c.signing.retired_ed25519_secrets[0], retired.ed25519_secret);
        let shown = c.to_masked_toml();
        let debug = format!("{c:?}");
        for secret in
            [&active.ed25519_secret, &active.es256_secret, &retired.ed25519_secret, &retired.es256_secret]
        {
            assert!(!shown.contains(secret.as_str()) && !debug.contains(secret.as_str()), "{shown}");
        }
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(!shown.contains("pr0xypw") && shown.contains("egress:********@proxy.bank:3128"), "{shown}");
        assert!(shown.contains("amqp://app:********@mq:5672/%2f"));
        assert!(shown.contains(r#"retired_ed25519_secrets = ["********"]"#), "{shown}");
    }

    #[test]
    fn signing_errors_name_the_key() {
        let (a, b) = (crate::keys::NewKeys::generate(), crate::keys::NewKeys::generate());
        let err = |pairs: &[(&str, &str)]| Config::load_with_env(None, env(pairs)).unwrap_err().to_string();
        let active = [
            ("WEBHOOKD_SIGNING_ED25519_SECRET", a.ed25519_secret.as_str()),
            ("WEBHOOKD_SIGNING_ES256_SECRET", a.es256_secret.as_str()),
        ];
        let with = |key: &str, value: &str| {
            let mut pairs: Vec<(&str, &str)> = active.to_vec();
            pairs.push((key, value));
            err(&pairs)
        };
        let e = err(&[active[0], ("WEBHOOKD_SIGNING_ES256_SECRET", "AAAA")]);
        assert!(e.starts_with("signing.es256_secret: ") && !e.contains(&a.ed25519_secret), "{e}");
        let e = with("WEBHOOKD_SIGNING_RETIRED_ES256_SECRETS", &format!("{},x", b.es256_secret));
        assert!(e.starts_with("signing.retired_es256_secrets[1]: "), "{e}");
        let e = with("WEBHOOKD_SIGNING_RETIRED_ED25519_SECRETS", &a.ed25519_secret);
        assert!(e.contains("is the active key signing.ed25519_secret"), "{e}");
        let e = err(&[("WEBHOOKD_SIGNING_RETIRED_ED25519_SECRETS", &b.ed25519_secret)]);
        assert!(e.contains("need the active keys"), "{e}");
        let e = with("WEBHOOKD_SIGNING_RETIRED_KEY_PUBLISH_HOURS", "1000000");
        assert!(e.contains("signing.retired_key_publish_hours"), "{e}");
        // A file is checked the same way.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            format!(
                "{}retired_es256_secrets = [\"{}\"]\n",
                b.to_config(crate::keys::ConfigFormat::Toml),
                b.es256_secret
            ),
        )
        .unwrap();
        let e = Config::load_with_env(Some(&file), env(&[])).unwrap_err().to_string();
        assert!(e.contains("signing.retired_es256_secrets[0] is the active key"), "{e}");
    }
}
