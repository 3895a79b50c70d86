//! The `[catalog]` configuration section.

use serde::{Deserialize, Serialize};

/// Where the catalog log lives and how long a change may take.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogSettings {
    /// The broker of the stream, `amqp://...`; empty: the broker of `amqp.url`.
    pub url: String,
    /// The RabbitMQ stream every replica appends catalog changes to and applies them from.
    pub stream: String,
    /// How long the stream keeps records (`x-max-age`: a number and a unit, `Y M D h m s`);
    /// empty: no age bound. A new replica starts from a snapshot in what is kept.
    pub max_age: String,
    /// Most bytes the stream keeps (`x-max-length-bytes`); 0: no size bound.
    pub max_length_bytes: u64,
    /// The size of the stream's segment files (`x-stream-max-segment-size-bytes`); retention
    /// drops whole segments; 0: the broker's default (500 MB).
    pub max_segment_size_bytes: u64,
    /// A snapshot of the whole catalog is appended after this many catalog changes since the
    /// last one (barriers and snapshots not counted); 0: not by count.
    pub snapshot_every_changes: u64,
    /// ... and once the last snapshot is this old in log time, seconds, so that retention never
    /// leaves the stream without one; 0: not by age.
    pub snapshot_every_seconds: u64,
    /// Whether the ingestion appends a barrier before matching each batch of events and waits
    /// until it is applied here: an event published after a change was answered, by any
    /// replica, is then matched with the change. A single replica can turn it off (its own
    /// changes are applied before it answers).
    pub barrier_per_batch: bool,
    /// The most bytes of catalog one snapshot record carries (a snapshot is split into parts).
    pub snapshot_part_bytes: u64,
    /// Longest wait for a change to be confirmed by the broker and applied here, milliseconds;
    /// past it the API answers 503 (the change may still land later).
    pub write_timeout_ms: u64,
}

impl Default for CatalogSettings {
    /// The defaults of `default.toml`.
    fn default() -> CatalogSettings {
        CatalogSettings {
            url: String::new(),
            stream: "webhookd.catalog".into(),
            max_age: "7D".into(),
            max_length_bytes: 0,
            max_segment_size_bytes: 0,
            snapshot_every_changes: 1_000,
            snapshot_every_seconds: 3_600,
            barrier_per_batch: true,
            snapshot_part_bytes: 8 << 20,
            write_timeout_ms: 10_000,
        }
    }
}

impl CatalogSettings {
    /// Checks the values a broker would refuse only at declaration time.
    pub fn validate(&self) -> Result<(), String> {
        if self.stream.is_empty() {
            return Err("catalog.stream must not be empty".into());
        }
        if !webhookd_amqp::stream::max_age_is_valid(&self.max_age) {
            return Err(format!(
                "catalog.max_age must be a number and a unit (Y, M, D, h, m or s), e.g. \"30D\" (got {:?})",
                self.max_age
            ));
        }
        self.validate_timeout()
    }

    fn validate_timeout(&self) -> Result<(), String> {
        if self.write_timeout_ms == 0 {
            return Err("catalog.write_timeout_ms must be more than 0".into());
        }
        // Base64 makes a part a third larger; RabbitMQ refuses messages over 16 MiB by default
        // on some versions (and 128 MiB on others).
        if self.snapshot_part_bytes == 0 || self.snapshot_part_bytes > 10 << 20 {
            return Err("catalog.snapshot_part_bytes must be 1 to 10485760".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_needs_a_number_and_a_unit() {
        let with = |age: &str| CatalogSettings { max_age: age.into(), ..CatalogSettings::default() };
        assert!(CatalogSettings::default().validate().is_ok());
        assert_eq!(CatalogSettings::default().max_age, "7D");
        assert!(with("7D").validate().is_ok());
        assert!(with("12h").validate().is_ok());
        assert!(with("").validate().is_ok(), "empty: no age bound");
        for bad in ["D", "7", "7d", "7 D", "-7D"] {
            assert!(with(bad).validate().is_err(), "{bad:?} was taken");
        }
        let part = |bytes| CatalogSettings { snapshot_part_bytes: bytes, ..CatalogSettings::default() };
        assert!(part(1).validate().is_ok() && part(10 << 20).validate().is_ok());
        assert!(part(0).validate().is_err() && part((10 << 20) + 1).validate().is_err());
    }
}
