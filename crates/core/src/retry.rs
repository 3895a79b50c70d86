//! The durable retry schedule: a pure function of the attempt number.
//!
//! Rabo's schedule is the default: retry n waits 2^n seconds (2 s, 4 s, ... about 12 days for
//! n = 20), 20 retries. In-process retries (reconnecting to the broker) use `backon` instead;
//! this schedule outlives the process, so it must be a function that the store can re-evaluate.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How failed deliveries are retried. The `[retry]` section of the configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Delay before the first retry, in milliseconds; retry n waits initial * factor^(n-1).
    pub initial_delay_ms: u64,
    /// Growth factor between retries (>= 1).
    pub factor: f64,
    /// Upper bound of a single delay, in milliseconds.
    pub max_delay_ms: u64,
    /// Number of retries after the first attempt; then the delivery is failed.
    pub retries: u32,
    /// Random spread of each delay, as a fraction (0.1 = plus or minus 10 %).
    pub jitter: f64,
    /// Longest `Retry-After` from a receiver that is honoured, in milliseconds.
    pub retry_after_max_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            initial_delay_ms: 2_000,
            factor: 2.0,
            max_delay_ms: 14 * 24 * 3_600_000,
            retries: 20,
            jitter: 0.0,
            retry_after_max_ms: 3_600_000,
        }
    }
}

/// The schedule a delivery keeps from its creation (or redelivery) to its end: how many
/// retries it gets and how their delays grow. Restarting with another `[retry]` configuration
/// changes the schedule of deliveries created afterwards only; one already pending keeps its
/// own (docs/operations.md, "Changing the retry schedule").
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Schedule {
    /// Delay before the first retry, in milliseconds.
    pub initial_delay_ms: u64,
    /// Growth factor between retries (>= 1, finite).
    pub factor: f64,
    /// Upper bound of a single delay, in milliseconds.
    pub max_delay_ms: u64,
    /// Retries after the first attempt.
    pub retries: u32,
}

// The factor is finite (validated), so comparing its bits is equality.
impl PartialEq for Schedule {
    fn eq(&self, other: &Schedule) -> bool {
        self.initial_delay_ms == other.initial_delay_ms
            && self.factor.to_bits() == other.factor.to_bits()
            && self.max_delay_ms == other.max_delay_ms
            && self.retries == other.retries
    }
}

impl Eq for Schedule {}

impl Default for Schedule {
    fn default() -> Schedule {
        RetryPolicy::default().schedule()
    }
}

impl Schedule {
    /// The delay before retry `n` (1-based), spread by `jitter` with a sample in [0, 1);
    /// `None` after the last.
    pub fn delay_before_retry(&self, n: u32, jitter: f64, jitter_sample: f64) -> Option<Duration> {
        if n == 0 || n > self.retries {
            return None;
        }
        // Exponents past i32::MAX only matter for factor 1 (where the power is 1 anyway); a
        // plain `n as i32` wrapped to a negative exponent (a shrinking delay) at n >= 2^31.
        let exponent = i32::try_from(n - 1).unwrap_or(i32::MAX);
        let base = self.initial_delay_ms as f64 * self.factor.powi(exponent);
        let capped = base.min(self.max_delay_ms as f64);
        let spread = 1.0 + jitter * (2.0 * jitter_sample.clamp(0.0, 1.0) - 1.0);
        let ms = (capped * spread).clamp(0.0, self.max_delay_ms as f64);
        // The cap again in integers: above 2^53 ms its f64 form can round up past it.
        Some(Duration::from_millis((ms.round() as u64).min(self.max_delay_ms)))
    }
}

impl RetryPolicy {
    /// The schedule a delivery created now gets.
    pub fn schedule(&self) -> Schedule {
        Schedule {
            initial_delay_ms: self.initial_delay_ms,
            factor: self.factor,
            max_delay_ms: self.max_delay_ms,
            retries: self.retries,
        }
    }

    /// The delay before retry `n` (1-based) of this policy's schedule with a jitter sample in
    /// [0, 1); `None` after the last.
    pub fn delay_before_retry(&self, n: u32, jitter_sample: f64) -> Option<Duration> {
        self.schedule().delay_before_retry(n, self.jitter, jitter_sample)
    }

    /// The delay before the next attempt of a delivery on `schedule` after `attempts` failed
    /// ones under it; `None` when exhausted. This policy's jitter and `Retry-After` cap apply.
    ///
    /// A receiver's `Retry-After` can only lengthen the wait (never retry faster than the
    /// schedule), and is capped at `retry_after_max_ms`.
    pub fn next_delay(
        &self,
        schedule: &Schedule,
        attempts: u32,
        retry_after: Option<Duration>,
        jitter_sample: f64,
    ) -> Option<Duration> {
        let scheduled = schedule.delay_before_retry(attempts, self.jitter, jitter_sample)?;
        let asked = retry_after.unwrap_or_default().min(Duration::from_millis(self.retry_after_max_ms));
        Some(scheduled.max(asked))
    }

    /// Checks the values; the error names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if self.initial_delay_ms == 0 {
            return Err("retry.initial_delay_ms must be at least 1".into());
        }
        if !(self.factor.is_finite() && self.factor >= 1.0) {
            return Err("retry.factor must be a number >= 1".into());
        }
        if self.max_delay_ms < self.initial_delay_ms {
            return Err("retry.max_delay_ms must be >= retry.initial_delay_ms".into());
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err("retry.jitter must be in [0, 1)".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_rabos_schedule() {
        let p = RetryPolicy::default();
        for n in 1..=20 {
            assert_eq!(p.delay_before_retry(n, 0.5), Some(Duration::from_secs(1 << n)), "retry {n}");
        }
        assert_eq!(p.delay_before_retry(21, 0.5), None);
        assert_eq!(p.delay_before_retry(0, 0.5), None);
        // Retry 10 is about 17 minutes, retry 20 about 12 days.
        assert_eq!(p.delay_before_retry(10, 0.5).unwrap().as_secs() / 60, 17);
        assert_eq!(p.delay_before_retry(20, 0.5).unwrap().as_secs() / 86_400, 12);
    }

    #[test]
    fn cap_and_jitter_bound_the_delay() {
        let p = RetryPolicy { max_delay_ms: 10_000, jitter: 0.2, ..RetryPolicy::default() };
        assert_eq!(p.delay_before_retry(1, 0.0), Some(Duration::from_millis(1_600)));
        assert_eq!(p.delay_before_retry(1, 1.0), Some(Duration::from_millis(2_400)));
        for n in 1..=20 {
            for s in [0.0, 0.3, 0.99] {
                assert!(p.delay_before_retry(n, s).unwrap() <= Duration::from_secs(10));
            }
        }
    }

    #[test]
    fn retry_after_only_lengthens_and_is_bounded() {
        let p = RetryPolicy::default();
        let s = |n| Some(Duration::from_secs(n));
        let schedule = p.schedule();
        assert_eq!(p.next_delay(&schedule, 1, s(60), 0.5), s(60));
        assert_eq!(p.next_delay(&schedule, 5, s(1), 0.5), s(32));
        assert_eq!(p.next_delay(&schedule, 1, s(86_400), 0.5), s(3_600));
        assert_eq!(p.next_delay(&schedule, 21, s(5), 0.5), None);
    }

    #[test]
    fn a_delivery_keeps_its_schedule_when_the_configuration_changes() {
        let created_under = RetryPolicy::default().schedule();
        let now = RetryPolicy {
            retries: 5,
            initial_delay_ms: 10_000,
            factor: 1.0,
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        // Retry 12 of the schedule it was created with, though the configuration now stops at 5.
        assert_eq!(now.next_delay(&created_under, 12, None, 0.5), Some(Duration::from_secs(1 << 12)));
        assert_eq!(now.next_delay(&created_under, 21, None, 0.5), None);
        // A delivery created now gets the new schedule.
        assert_eq!(now.next_delay(&now.schedule(), 6, None, 0.5), None);
        assert_eq!(now.next_delay(&now.schedule(), 3, None, 0.5), Some(Duration::from_secs(10)));
    }

    /// Regressions (property tests, crates/core/tests/properties.rs): retry 2^31 overflowed the
    /// exponent (a panic in debug builds, a shrinking delay in release), and a cap above 2^53 ms
    /// could be exceeded by the f64 rounding of the cap itself.
    #[test]
    fn huge_attempt_numbers_and_caps_stay_bounded() {
        let p = RetryPolicy {
            initial_delay_ms: 1,
            factor: 1.5,
            max_delay_ms: 10,
            retries: u32::MAX,
            ..RetryPolicy::default()
        };
        for n in [1 << 31, (1 << 31) + 1, u32::MAX] {
            assert_eq!(p.delay_before_retry(n, 0.5), Some(Duration::from_millis(10)), "retry {n}");
        }
        let p = RetryPolicy {
            initial_delay_ms: 1,
            factor: 1.0,
            max_delay_ms: 1,
            retries: u32::MAX,
            ..RetryPolicy::default()
        };
        assert_eq!(p.delay_before_retry(1 << 31, 0.5), Some(Duration::from_millis(1)));
        let max_delay_ms = 55_393_427_750_421_285;
        let p = RetryPolicy {
            initial_delay_ms: max_delay_ms,
            factor: 2.0,
            max_delay_ms,
            retries: 3,
            ..RetryPolicy::default()
        };
        for n in 1..=3 {
            assert!(p.delay_before_retry(n, 0.5).unwrap() <= Duration::from_millis(max_delay_ms));
        }
    }

    #[test]
    fn validation_names_the_key() {
        let bad = RetryPolicy { factor: 0.5, ..RetryPolicy::default() };
        assert!(bad.validate().unwrap_err().contains("retry.factor"));
        assert!(RetryPolicy::default().validate().is_ok());
    }
}
