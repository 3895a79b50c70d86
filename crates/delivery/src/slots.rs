//! Per-destination in-flight slots, with an adaptive limit, in memory.
//!
//! A delivery takes one of its destination's slots for the length of its attempt. When none is
//! free it waits a short, bounded time for one; past that, the caller defers it through the
//! broker, so a slow or dead receiver holds no event and no prefetch slot for long.
//!
//! The limit adapts: an attempt that got no answer (timeout, refused connection) halves it,
//! down to 1; an answered one raises it by one, up to the configured maximum. Dead receivers
//! thus hold one slot each. A destination's state is forgotten once nothing is in flight and
//! its limit is back at the maximum, so memory follows the destinations in trouble, not all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

/// The slots of every destination.
pub struct Slots {
    max: usize,
    destinations: Mutex<HashMap<String, Destination>>,
}

struct Destination {
    in_flight: usize,
    /// Requests it may have in flight now (adaptive, 1 to the maximum).
    limit: usize,
    /// Woken once per freed slot.
    freed: Arc<Notify>,
}

/// One slot taken; give it back with [`Slot::release`] (dropping it releases it as answered).
pub struct Slot {
    slots: Arc<Slots>,
    destination: String,
    released: bool,
}

impl Slots {
    /// Slots with at most `max` in flight per destination (at least 1).
    pub fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots { max: max.max(1), destinations: Mutex::new(HashMap::new()) })
    }

    /// Takes a slot of `destination`, waiting at most `wait` for one to free; `None` when none
    /// did (the caller defers the delivery).
    pub async fn acquire(self: &Arc<Self>, destination: &str, wait: Duration) -> Option<Slot> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let freed = {
                let mut map = self.destinations.lock().unwrap_or_else(PoisonError::into_inner);
                let d = map.entry(destination.to_string()).or_insert_with(|| Destination {
                    in_flight: 0,
                    limit: self.max,
                    freed: Arc::new(Notify::new()),
                });
                if d.in_flight < d.limit {
                    d.in_flight += 1;
                    return Some(Slot {
                        slots: self.clone(),
                        destination: destination.to_string(),
                        released: false,
                    });
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

    fn release(&self, destination: &str, answered: bool) {
        let mut map = self.destinations.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(d) = map.get_mut(destination) else { return };
        d.in_flight = d.in_flight.saturating_sub(1);
        d.limit = if answered { (d.limit + 1).min(self.max) } else { (d.limit / 2).max(1) };
        if d.in_flight == 0 && d.limit == self.max {
            // Whoever waits on it finds a fresh entry with every slot free.
            d.freed.notify_waiters();
            map.remove(destination);
        } else if d.in_flight < d.limit {
            d.freed.notify_one();
        }
    }
}

impl Slot {
    /// Gives the slot back, noting whether the receiver answered (the limit adapts).
    pub fn release(mut self, answered: bool) {
        self.released = true;
        self.slots.release(&self.destination, answered);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // An attempt dropped midway (shutdown): its slot is free, and nothing was learnt.
        if !self.released {
            self.slots.release(&self.destination, true);
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
        assert!(slots.acquire("d", Duration::from_millis(100)).await.is_none(), "no slot freed in time");
        // Another destination is not held up by this one.
        assert!(slots.acquire("e", Duration::ZERO).await.is_some());
        drop(busy);
        assert_eq!(slots.state("d"), None);
    }
}
