//! Per-destination in-flight slots, with an adaptive limit, in memory.
//!
//! A delivery takes one of its destination's slots for the length of its attempt. When none is
//! free it waits for one only if the wait is expected to be short: the deliveries already
//! waiting there, times the destination's recent attempt time, over its limit, must fit within
//! the horizon the caller gives (`delivery.slot_wait_ms`). The attempt time is the recent
//! one, or the age of the oldest attempt in flight when that is several times longer, so a
//! receiver that stops answering is noticed before its first attempt ends. So a burst to a
//! receiver that answers quickly queues here and drains, while a slow or dead receiver gets at
//! most a few waiters and every other delivery to it is deferred at once: it holds no event and
//! no prefetch slot for long. A wait that lasts twice the horizon anyway ends in a deferral too.
//!
//! The limit adapts: an attempt that got no answer (timeout, refused connection) halves it,
//! down to 1; an answered one raises it by one, up to the configured maximum. Dead receivers
//! thus hold one slot each. A destination's state is forgotten once nothing is in flight or
//! waiting, its limit is back at the maximum and it answers quickly, so memory follows the
//! destinations in trouble, not all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Weight of the newest attempt in a destination's recent attempt time.
const RECENT_WEIGHT: f64 = 0.2;

/// A destination idle at its full limit is forgotten unless its attempts took this long: a
/// slow receiver's next burst is then deferred at once instead of waiting to learn it again.
const REMEMBER_SLOWER_THAN: Duration = Duration::from_millis(100);

/// An attempt in flight this many times older than the recent attempt time means the receiver
/// is stuck: the expected wait follows its age instead.
const STUCK_FACTOR: f64 = 4.0;

/// The slots of every destination.
pub struct Slots {
    max: usize,
    destinations: Mutex<HashMap<String, Destination>>,
}

struct Destination {
    in_flight: usize,
    /// When each attempt in flight started (at most the limit's worth).
    started: Vec<Instant>,
    /// Deliveries waiting for a slot.
    waiting: usize,
    /// Requests it may have in flight now (adaptive, 1 to the maximum).
    limit: usize,
    /// Recent attempt time (moving average), seconds; 0 until an attempt ends.
    recent_secs: f64,
    /// Woken once per freed slot.
    freed: Arc<Notify>,
}

impl Destination {
    /// How long the last of its waiters (and one more) would wait for a slot: by the recent
    /// attempt time, or by the age of the oldest attempt in flight when that is several times
    /// longer (a receiver that stopped answering is noticed before its first attempt ends; the
    /// oldest of many attempts in flight is normally about one attempt time old).
    fn expected_wait(&self, now: Instant) -> Duration {
        let oldest =
            self.started.iter().min().map_or(0.0, |t| now.saturating_duration_since(*t).as_secs_f64());
        let attempt = if oldest > STUCK_FACTOR * self.recent_secs { oldest } else { self.recent_secs };
        let ahead = (self.waiting + 1) as f64;
        Duration::from_secs_f64(ahead * attempt / self.limit as f64)
    }
}

/// One slot taken; give it back with [`Slot::release`] (dropping it releases it as answered).
pub struct Slot {
    slots: Arc<Slots>,
    destination: String,
    taken: Instant,
    released: bool,
}

/// Counts a delivery as waiting for as long as it waits, however its wait ends.
struct Waiting<'a> {
    slots: &'a Slots,
    destination: &'a str,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut map = self.slots.destinations.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(d) = map.get_mut(self.destination) {
            d.waiting = d.waiting.saturating_sub(1);
        }
    }
}

impl Slots {
    /// Slots with at most `max` in flight per destination (at least 1).
    pub fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots { max: max.max(1), destinations: Mutex::new(HashMap::new()) })
    }

    /// Takes a slot of `destination`, waiting for one when, on arrival, the wait is expected
    /// within `horizon` (and for twice that at most); `None` when it is not (the caller defers
    /// the delivery).
    pub async fn acquire(self: &Arc<Self>, destination: &str, horizon: Duration) -> Option<Slot> {
        let deadline = Instant::now() + horizon * 2;
        let mut waiting = None;
        loop {
            let freed = {
                let mut map = self.destinations.lock().unwrap_or_else(PoisonError::into_inner);
                let d = map.entry(destination.to_string()).or_insert_with(|| Destination {
                    in_flight: 0,
                    started: Vec::new(),
                    waiting: 0,
                    limit: self.max,
                    recent_secs: 0.0,
                    freed: Arc::new(Notify::new()),
                });
                let now = Instant::now();
                if d.in_flight < d.limit {
                    d.in_flight += 1;
                    d.started.push(now);
                    return Some(Slot {
                        slots: self.clone(),
                        destination: destination.to_string(),
                        taken: now,
                        released: false,
                    });
                }
                if waiting.is_none() {
                    // Judged once, on arrival: a waiter's later estimate would be the last
                    // waiter's, not its own.
                    if d.expected_wait(now) > horizon {
                        return None;
                    }
                    d.waiting += 1;
                    waiting = Some(Waiting { slots: self, destination });
                }
                d.freed.clone()
            };
            // `notify_one` keeps a permit when nobody waits yet, so a slot freed between the
            // lock above and this wait is not missed.
            if tokio::time::timeout_at(deadline, freed.notified()).await.is_err() {
                return None;
            }
        }
    }

    /// A destination's (in flight, limit), if it has state (tests and metrics).
    pub fn state(&self, destination: &str) -> Option<(usize, usize)> {
        let map = self.destinations.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(destination).map(|d| (d.in_flight, d.limit))
    }

    fn release(&self, destination: &str, answered: bool, taken: Instant) {
        let took = taken.elapsed();
        let mut map = self.destinations.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(d) = map.get_mut(destination) else { return };
        d.in_flight = d.in_flight.saturating_sub(1);
        if let Some(i) = d.started.iter().position(|t| *t == taken) {
            d.started.swap_remove(i);
        }
        d.limit = if answered { (d.limit + 1).min(self.max) } else { (d.limit / 2).max(1) };
        d.recent_secs = if d.recent_secs == 0.0 {
            took.as_secs_f64()
        } else {
            RECENT_WEIGHT * took.as_secs_f64() + (1.0 - RECENT_WEIGHT) * d.recent_secs
        };
        let quick = d.recent_secs < REMEMBER_SLOWER_THAN.as_secs_f64();
        if d.in_flight == 0 && d.waiting == 0 && d.limit == self.max && quick {
            map.remove(destination);
        } else if d.in_flight < d.limit {
            d.freed.notify_one();
        }
    }
}

impl Slot {
    /// Gives the slot back, noting whether the receiver answered (the limit adapts) and how
    /// long the attempt took (the expected wait follows it).
    pub fn release(mut self, answered: bool) {
        self.released = true;
        self.slots.release(&self.destination, answered, self.taken);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // An attempt dropped midway (shutdown): its slot is free, and nothing was learnt.
        if !self.released {
            self.slots.release(&self.destination, true, self.taken);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_destination_that_stops_answering_shrinks_to_one_slot_and_recovers() {
        let slots = Slots::new(8);
        let mut held = Vec::new();
        for _ in 0..6 {
            held.push(slots.acquire("d", Duration::ZERO).await.unwrap());
        }
        let mut seen = Vec::new();
        for _ in 0..5 {
            held.pop().unwrap().release(false);
            seen.push(slots.state("d").map(|(_, limit)| limit));
        }
        assert_eq!(seen, [Some(4), Some(2), Some(1), Some(1), Some(1)]);
        // One in flight at limit 1: no other slot.
        assert!(slots.acquire("d", Duration::from_millis(10)).await.is_none());
        held.pop().unwrap().release(true);
        assert_eq!(slots.state("d"), Some((0, 2)), "answers raise the limit one step at a time");
        for step in 3..=8 {
            slots.acquire("d", Duration::ZERO).await.unwrap().release(true);
            if step < 8 {
                assert_eq!(slots.state("d"), Some((0, step)));
            }
        }
        assert_eq!(slots.state("d"), None, "back at the maximum with nothing in flight: forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gets_the_slot_freed_within_its_wait_and_gives_up_after_it() {
        let slots = Slots::new(1);
        let first = slots.acquire("d", Duration::ZERO).await.unwrap();
        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire("d", Duration::from_millis(100)).await.map(|s| s.release(true)) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        first.release(true);
        assert_eq!(waiter.await.unwrap(), Some(()), "the freed slot went to the waiter");

        let busy = slots.acquire("d", Duration::ZERO).await.unwrap();
        let asked = Instant::now();
        assert!(slots.acquire("d", Duration::from_millis(100)).await.is_none(), "no slot freed");
        // Expected within the horizon on arrival (50 ms attempts), given up at twice it.
        assert_eq!(asked.elapsed(), Duration::from_millis(200));
        // Another destination is not held up by this one.
        assert!(slots.acquire("e", Duration::ZERO).await.is_some());
        drop(busy);
        assert_eq!(slots.state("d"), Some((0, 1)), "idle, and remembered: its last attempt took 200 ms");
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_to_a_quick_receiver_waits_and_a_slow_receiver_defers_at_once() {
        let slots = Slots::new(2);
        // A receiver answering in 10 ms: 2 in flight, 50 more wait (expected 250 ms < 1 s).
        for _ in 0..2 {
            let slot = slots.acquire("quick", Duration::ZERO).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
            slot.release(true);
        }
        let mut burst = tokio::task::JoinSet::new();
        for _ in 0..52 {
            let slots = slots.clone();
            burst.spawn(async move {
                let slot = slots.acquire("quick", Duration::from_secs(1)).await?;
                tokio::time::sleep(Duration::from_millis(10)).await;
                slot.release(true);
                Some(())
            });
        }
        let taken = burst.join_all().await;
        assert!(taken.iter().all(Option::is_some), "a quick receiver's burst is never deferred");

        // A receiver answering in 3 s: with both slots busy, the first waiter expects 1.5 s,
        // past the 1 s horizon: deferred at once, without waiting.
        for _ in 0..2 {
            let slot = slots.acquire("slow", Duration::ZERO).await.unwrap();
            tokio::time::sleep(Duration::from_secs(3)).await;
            slot.release(true);
        }
        let held = [slots.acquire("slow", Duration::ZERO).await, slots.acquire("slow", Duration::ZERO).await];
        assert!(held.iter().all(Option::is_some));
        let asked = Instant::now();
        assert!(slots.acquire("slow", Duration::from_secs(1)).await.is_none());
        assert_eq!(asked.elapsed(), Duration::ZERO, "deferred without waiting");
    }
}
