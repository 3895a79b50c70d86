//! Logging: tracing with an env-filter, as text or JSON.

use tracing_subscriber::EnvFilter;

use crate::config::LogSettings;

/// Installs the global subscriber (once; later calls are ignored). `RUST_LOG` wins over the config.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if settings.format == "json" { builder.json().try_init() } else { builder.try_init() };
}
