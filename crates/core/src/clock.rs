//! The one clock all delivery timing reads, with a time scale for the replay harness.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall time plus a time scale that compresses the retry schedule.
///
/// Due times are stored as wall-clock milliseconds, so they stay meaningful across restarts;
/// a scale above 1 shortens every scheduled delay (a 20-retry schedule of days replays in
/// seconds) while keeping their order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Clock {
    time_scale: f64,
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::real()
    }
}

impl Clock {
    /// A clock that runs at real speed.
    pub fn real() -> Clock {
        Clock { time_scale: 1.0 }
    }

    /// A clock whose scheduled delays are divided by `time_scale` (> 0).
    pub fn scaled(time_scale: f64) -> Clock {
        let time_scale = if time_scale.is_finite() && time_scale > 0.0 { time_scale } else { 1.0 };
        Clock { time_scale }
    }

    /// The time scale.
    pub fn time_scale(&self) -> f64 {
        self.time_scale
    }

    /// Now, in unix milliseconds.
    pub fn now_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }

    /// Now, in unix seconds (for signature timestamps, which receivers check against wall time).
    pub fn now_secs(&self) -> i64 {
        (self.now_ms() / 1000) as i64
    }

    /// A scheduled delay as it elapses on this clock (at most `Duration::MAX`).
    pub fn scale(&self, delay: Duration) -> Duration {
        // A scale below 1 lengthens delays; a tiny one would overflow `Duration` (a panic in
        // `from_secs_f64`), so the result saturates instead.
        Duration::try_from_secs_f64(delay.as_secs_f64() / self.time_scale).unwrap_or(Duration::MAX)
    }

    /// The due time, in unix milliseconds, of something `delay` from now (saturating).
    pub fn due_in(&self, delay: Duration) -> u64 {
        let ms = u64::try_from(self.scale(delay).as_millis()).unwrap_or(u64::MAX);
        self.now_ms().saturating_add(ms)
    }
}

/// A unix time in milliseconds as RFC 3339 in UTC (`2026-11-20T09:00:00.123Z`), for logs and
/// answers that people read; empty for a time `time` cannot represent.
pub fn rfc3339_ms(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_rfc3339() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_ms(1_795_514_400_123), "2026-11-24T10:00:00.123Z");
        assert_eq!(rfc3339_ms(u64::MAX), "");
    }

    #[test]
    fn scaling_divides_delays() {
        let c = Clock::scaled(1000.0);
        assert_eq!(c.scale(Duration::from_secs(2000)), Duration::from_secs(2));
        assert_eq!(Clock::scaled(0.0).time_scale(), 1.0);
        assert_eq!(Clock::scaled(f64::NAN).time_scale(), 1.0);
        let before = c.now_ms();
        let due = c.due_in(Duration::from_secs(10));
        assert!(due >= before + 10 && due <= before + 1000);
    }

    /// Regression (property tests, crates/core/tests/properties.rs): a tiny time scale made
    /// `scale` panic (`Duration::from_secs_f64` overflow) and `due_in` wrap its milliseconds.
    #[test]
    fn tiny_time_scales_saturate() {
        let c = Clock::scaled(f64::MIN_POSITIVE);
        assert_eq!(c.scale(Duration::from_secs(1)), Duration::MAX);
        assert_eq!(c.due_in(Duration::from_secs(1)), u64::MAX);
        assert_eq!(c.scale(Duration::ZERO), Duration::ZERO);
        let slow = Clock::scaled(1e-6);
        assert_eq!(slow.due_in(Duration::MAX), u64::MAX);
        assert!(slow.due_in(Duration::from_secs(1)) >= slow.now_ms() + 1_000_000 - 1);
    }
}
