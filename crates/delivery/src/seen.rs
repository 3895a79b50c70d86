//! Copies of one delivery that arrive while it is being handled, or soon after, are handled
//! once.
//!
//! Copies come from a message published twice, an event redelivered after a lost
//! acknowledgement, or a retry the broker moved twice (at-least-once dead-lettering). A copy
//! that arrives while the delivery is in flight waits for it, then is dropped if what the
//! first one reached makes it redundant ([`Progress::supersedes`]); what recent deliveries
//! reached is remembered for the last [`SEEN_CAPACITY`] of them. Older copies are caught by the
//! delivery log, which the dispatch side reads next.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;
use uuid::Uuid;
use webhookd_core::delivery::{Delivery, Progress};

/// How many deliveries' progress is remembered.
pub const SEEN_CAPACITY: usize = 65_536;

/// Deliveries in flight and recently handled.
#[derive(Default)]
pub struct Seen {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    in_flight: HashMap<Uuid, Arc<Notify>>,
    known: HashMap<Uuid, Progress>,
    order: VecDeque<Uuid>,
}

/// The right to handle one delivery now; [`Turn::finish`] with what it reached.
pub struct Turn<'a> {
    seen: &'a Seen,
    id: Uuid,
    finished: bool,
}

impl Seen {
    /// Waits until no copy of `delivery` is in flight; `None` when what is known of it makes
    /// this copy redundant, else the turn to handle it.
    pub async fn enter(&self, delivery: &Delivery) -> Option<Turn<'_>> {
        let incoming = delivery.progress();
        loop {
            let notify = {
                let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                if state.known.get(&delivery.id).is_some_and(|known| known.supersedes(&incoming)) {
                    return None;
                }
                match state.in_flight.get(&delivery.id) {
                    Some(notify) => notify.clone(),
                    None => {
                        state.in_flight.insert(delivery.id, Arc::new(Notify::new()));
                        return Some(Turn { seen: self, id: delivery.id, finished: false });
                    }
                }
            };
            let notified = notify.notified();
            tokio::pin!(notified);
            // Registered before the in-flight entry is looked at again, so the end of the copy
            // in flight cannot slip between the look and the wait.
            notified.as_mut().enable();
            let still = {
                let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                state.in_flight.get(&delivery.id).is_some_and(|n| Arc::ptr_eq(n, &notify))
            };
            if still {
                notified.await;
            }
        }
    }

    fn end(&self, id: Uuid, reached: Option<Progress>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(progress) = reached {
            if state.known.insert(id, progress).is_none() {
                state.order.push_back(id);
                if state.order.len() > SEEN_CAPACITY {
                    if let Some(oldest) = state.order.pop_front() {
                        state.known.remove(&oldest);
                    }
                }
            }
        }
        if let Some(notify) = state.in_flight.remove(&id) {
            notify.notify_waiters();
        }
    }
}

impl Turn<'_> {
    /// Ends the turn: the delivery reached `progress` (finished, or held by the broker).
    pub fn finish(mut self, progress: Progress) {
        self.finished = true;
        self.seen.end(self.id, Some(progress));
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        // Failed or dropped midway: nothing learnt, the next copy tries.
        if !self.finished {
            self.seen.end(self.id, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(attempts: u32) -> Delivery {
        Delivery { attempts, ..Delivery::fixture() }
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_arriving_in_flight_waits_and_is_dropped_once_the_first_got_further() {
        let seen = Arc::new(Seen::default());
        let first = seen.enter(&copy(0)).await.expect("the first copy gets its turn");
        let waiting = tokio::spawn({
            let seen = seen.clone();
            async move { seen.enter(&copy(0)).await.is_some() }
        });
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert!(!waiting.is_finished(), "the copy waits while the first is in flight");
        let mut retried = copy(1);
        retried.next_attempt_at_ms = Some(5);
        first.finish(retried.progress());
        assert!(!waiting.await.unwrap(), "one attempt made: the event's copy is redundant");
        // The retry of that attempt is not redundant; a second copy of it, after it, is.
        let turn = seen.enter(&copy(1)).await.expect("the retry itself goes on");
        turn.finish(copy(2).progress());
        assert!(seen.enter(&copy(1)).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_that_failed_lets_the_next_copy_try() {
        let seen = Seen::default();
        drop(seen.enter(&copy(0)).await.unwrap());
        assert!(seen.enter(&copy(0)).await.is_some(), "nothing was learnt from the failed turn");
    }

    #[tokio::test]
    async fn only_the_most_recent_deliveries_are_remembered() {
        let seen = Seen::default();
        let done = |n: u128| Delivery { id: Uuid::from_u128(n), ..copy(0) };
        for n in 0..(SEEN_CAPACITY as u128 + 1) {
            seen.enter(&done(n)).await.unwrap().finish(copy(1).progress());
        }
        assert!(seen.enter(&done(0)).await.is_some(), "the oldest was forgotten");
        assert!(seen.enter(&done(SEEN_CAPACITY as u128)).await.is_none(), "the newest is known");
    }
}
