//! Retry tiers: the fixed delays a pending delivery can wait in the broker, and which one a
//! wait takes.
//!
//! RabbitMQ holds pending retries in one queue per delay ("tier"), each with a message TTL that
//! dead-letters into the due queue. A queue has one TTL, so a wait must be one of a fixed set:
//! the delays of the configured schedule (as the clock's time scale shortens them) and the
//! deferral of a delivery whose destination is at its limit. A wait is rounded **up** to the
//! next tier, so no retry is sent before its schedule (or a receiver's `Retry-After`) allows;
//! a wait longer than the longest tier takes the longest and is routed again when it comes due
//! ("hops"), so any wait can be served.
//!
//! Pure and deterministic: every replica with the same configuration derives the same tiers
//! and the same queue names (a name carries its TTL, so a changed schedule declares new tiers
//! and the old ones drain into the same due queue).

use std::time::Duration;

use crate::clock::Clock;
use crate::retry::RetryPolicy;

/// The set of tier TTLs, in milliseconds as they elapse on the clock (scaled), ascending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tiers {
    ttls_ms: Vec<u64>,
    defer_ms: u64,
}

impl Tiers {
    /// The tiers of `policy`'s schedule on `clock`, plus a deferral tier of `defer` (real time:
    /// a destination's free slot does not come sooner under a replay's time scale).
    pub fn new(policy: &RetryPolicy, clock: &Clock, defer: Duration) -> Tiers {
        let mut ttls_ms: Vec<u64> = (1..=policy.retries)
            .map_while(|n| policy.delay_before_retry(n, 0.5))
            .map(|delay| scaled_ms(clock, delay))
            .collect();
        let defer_ms = (defer.as_millis() as u64).max(1);
        ttls_ms.push(defer_ms);
        ttls_ms.sort_unstable();
        ttls_ms.dedup();
        Tiers { ttls_ms, defer_ms }
    }

    /// Every tier's TTL, ascending.
    pub fn ttls_ms(&self) -> &[u64] {
        &self.ttls_ms
    }

    /// The deferral tier's TTL.
    pub fn defer_ms(&self) -> u64 {
        self.defer_ms
    }

    /// The tier a wait of `wait_ms` (on the clock) takes: the shortest at or above it, or the
    /// longest when none is (the delivery then hops again when it comes due).
    pub fn tier_for(&self, wait_ms: u64) -> u64 {
        let at = self.ttls_ms.partition_point(|&ttl| ttl < wait_ms);
        self.ttls_ms.get(at).or(self.ttls_ms.last()).copied().unwrap_or(self.defer_ms)
    }

    /// The queue name of the tier with `ttl_ms` under `prefix`: `<prefix>.<ttl>ms`.
    pub fn queue_name(prefix: &str, ttl_ms: u64) -> String {
        format!("{prefix}.{ttl_ms}ms")
    }
}

/// A delay as it elapses on `clock`, in whole milliseconds, at least 1 (a TTL of 0 would
/// expire at once only when the queue is being consumed, and tiers are never consumed).
fn scaled_ms(clock: &Clock, delay: Duration) -> u64 {
    u64::try_from(clock.scale(delay).as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule_gives_one_tier_per_retry_plus_the_deferral() {
        let tiers = Tiers::new(&RetryPolicy::default(), &Clock::real(), Duration::from_secs(1));
        let mut expected: Vec<u64> = (1..=20).map(|n| 1_000u64 << n).collect();
        expected.insert(0, 1_000);
        assert_eq!(tiers.ttls_ms(), expected.as_slice());
        assert_eq!(tiers.defer_ms(), 1_000);
    }

    #[test]
    fn waits_round_up_and_never_below_what_was_asked() {
        let tiers = Tiers::new(&RetryPolicy::default(), &Clock::real(), Duration::from_millis(500));
        assert_eq!(tiers.tier_for(0), 500);
        assert_eq!(tiers.tier_for(500), 500);
        assert_eq!(tiers.tier_for(501), 2_000);
        assert_eq!(tiers.tier_for(2_000), 2_000);
        // A Retry-After of an hour waits in the first tier at or above it.
        assert_eq!(tiers.tier_for(3_600_000), 4_096_000);
        for wait in [1, 999, 65_537, 1 << 29] {
            assert!(tiers.tier_for(wait) >= wait, "{wait}");
        }
        // Longer than every tier: the longest, and it hops again when due.
        assert_eq!(tiers.tier_for(u64::MAX), 1_000 << 20);
    }

    #[test]
    fn the_time_scale_shortens_the_schedule_but_not_the_deferral() {
        let tiers = Tiers::new(&RetryPolicy::default(), &Clock::scaled(1_000.0), Duration::from_secs(1));
        assert_eq!(&tiers.ttls_ms()[..3], &[2, 4, 8]);
        assert!(tiers.ttls_ms().contains(&1_000));
        // Delays below a millisecond on the clock still wait one.
        let fast = Tiers::new(&RetryPolicy::default(), &Clock::scaled(1e9), Duration::from_secs(1));
        assert_eq!(fast.ttls_ms()[0], 1);
    }

    #[test]
    fn names_carry_the_ttl() {
        assert_eq!(Tiers::queue_name("webhookd.retry", 2_000), "webhookd.retry.2000ms");
    }
}
