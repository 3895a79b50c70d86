//! Acknowledgements of one channel's messages, as their work finishes: one multiple ack for
//! every run of finished messages, instead of one frame per message.
//!
//! Work finishes out of order (deliveries to different receivers). A multiple ack may cover
//! only messages that are all finished, so a finished message above one still in flight waits
//! a little ([`HOLD`]) for the gap to close, then is acknowledged alone: a slow receiver never
//! holds other messages' prefetch slots for longer than that. The broker refuses a multiple
//! ack whose own tag was acknowledged already (`PRECONDITION_FAILED`), so a multiple ack always
//! names a message not acknowledged yet.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use lapin::options::BasicAckOptions;
use lapin::Channel;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::IngestError;

/// How long a finished message waits for the messages before it to finish, so that one
/// multiple ack covers them all, before it is acknowledged alone.
pub const HOLD: Duration = Duration::from_millis(20);

/// Finished messages taken in one round at most.
const ROUND: usize = 1024;

/// One acknowledgement to send: the message's tag, and whether it covers every finished
/// message before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The delivery tag named.
    pub tag: u64,
    /// A multiple ack (every message up to `tag` not acknowledged yet).
    pub multiple: bool,
}

/// Which finished messages to acknowledge how. Delivery tags on a channel start at 1 and
/// count every message delivered on it; each is finished exactly once.
#[derive(Debug, Default)]
pub struct AckPlan {
    /// Every message up to here is acknowledged.
    floor: u64,
    /// Finished, not acknowledged yet, and when they finished.
    finished: BTreeMap<u64, Instant>,
    /// Acknowledged alone, above the floor.
    alone: BTreeSet<u64>,
}

impl AckPlan {
    /// Notes that the message `tag` finished at `at`.
    pub fn finish(&mut self, tag: u64, at: Instant) {
        if tag > self.floor && !self.alone.contains(&tag) {
            self.finished.insert(tag, at);
        }
    }

    /// The acknowledgements due at `now`, and the tags each one covers (now acknowledged).
    pub fn due(&mut self, now: Instant) -> Vec<(Ack, Vec<u64>)> {
        let mut out = Vec::new();
        let mut floor = self.floor;
        while self.finished.contains_key(&(floor + 1)) || self.alone.contains(&(floor + 1)) {
            floor += 1;
        }
        if floor > self.floor {
            let above = self.finished.split_off(&(floor + 1));
            let covered: Vec<u64> = std::mem::replace(&mut self.finished, above).into_keys().collect();
            self.alone = self.alone.split_off(&(floor + 1));
            self.floor = floor;
            if let Some(&tag) = covered.last() {
                out.push((Ack { tag, multiple: true }, covered));
            }
        }
        let waited: Vec<u64> = self
            .finished
            .iter()
            .filter(|(_, at)| now.duration_since(**at) >= HOLD)
            .map(|(t, _)| *t)
            .collect();
        for tag in waited {
            self.finished.remove(&tag);
            self.alone.insert(tag);
            out.push((Ack { tag, multiple: false }, vec![tag]));
        }
        out
    }

    /// When the next acknowledgement falls due without anything else finishing.
    pub fn next_due(&self) -> Option<Instant> {
        self.finished.values().min().map(|at| *at + HOLD)
    }

    /// Whether nothing finished waits for its acknowledgement.
    pub fn is_idle(&self) -> bool {
        self.finished.is_empty()
    }
}

/// A message finished, and who waits for its acknowledgement to be sent.
struct Finished {
    tag: u64,
    sent: oneshot::Sender<bool>,
}

/// The handle of one channel's acknowledger; cheap to clone.
#[derive(Clone)]
pub struct Acks {
    finished: mpsc::UnboundedSender<Finished>,
}

impl Acks {
    /// An acknowledger for `channel`, each ack awaited at most `ms`. An ack that fails is
    /// reported to `failed` (the connection is given up); it ends once every handle is dropped
    /// and what was finished is acknowledged.
    pub fn start(channel: Channel, ms: u64, failed: mpsc::Sender<IngestError>) -> Acks {
        let (finished, received) = mpsc::unbounded_channel();
        tokio::spawn(acknowledge(channel, ms, failed, received));
        Acks { finished }
    }

    /// Acknowledges the message `tag`; true once an ack covering it is sent, false when it
    /// could not be (already reported: the message goes back to the queue).
    pub async fn ack(&self, tag: u64) -> bool {
        let (sent, answer) = oneshot::channel();
        if self.finished.send(Finished { tag, sent }).is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }
}

async fn acknowledge(
    channel: Channel,
    ms: u64,
    failed: mpsc::Sender<IngestError>,
    mut received: mpsc::UnboundedReceiver<Finished>,
) {
    let mut plan = AckPlan::default();
    let mut waiting: HashMap<u64, oneshot::Sender<bool>> = HashMap::new();
    let mut round = Vec::with_capacity(ROUND);
    let mut open = true;
    while open || !plan.is_idle() {
        let wake = plan.next_due();
        tokio::select! {
            n = received.recv_many(&mut round, ROUND), if open => open = n > 0,
            _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
        }
        let now = Instant::now();
        for Finished { tag, sent } in round.drain(..) {
            plan.finish(tag, now);
            waiting.insert(tag, sent);
        }
        for (ack, covered) in plan.due(now) {
            let sent = channel.basic_ack(ack.tag, BasicAckOptions { multiple: ack.multiple });
            let done = webhookd_amqp::within(None, "acknowledgement", ms, sent).await;
            let ok = done.is_ok();
            if let Err(e) = done {
                let _ = failed.try_send(e.into());
            }
            for tag in covered {
                if let Some(sent) = waiting.remove(&tag) {
                    let _ = sent.send(ok);
                }
            }
            if !ok {
                // The connection is given up: what is not acknowledged goes back to the queue.
                for (_, sent) in waiting.drain() {
                    let _ = sent.send(false);
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(finished: &[(u64, u64)], now_ms: u64) -> Vec<(Ack, Vec<u64>)> {
        let start = Instant::now();
        let mut plan = AckPlan::default();
        for (tag, at_ms) in finished {
            plan.finish(*tag, start + Duration::from_millis(*at_ms));
        }
        plan.due(start + Duration::from_millis(now_ms))
    }

    #[test]
    fn a_run_of_finished_messages_is_one_multiple_ack() {
        assert_eq!(
            plan_of(&[(2, 0), (1, 0), (3, 0)], 0),
            vec![(Ack { tag: 3, multiple: true }, vec![1, 2, 3])]
        );
    }

    #[test]
    fn a_message_above_a_gap_waits_then_is_acknowledged_alone_and_the_gap_closes_later() {
        let start = Instant::now();
        let mut plan = AckPlan::default();
        plan.finish(1, start);
        plan.finish(3, start);
        // 1 at once; 3 waits for 2.
        assert_eq!(plan.due(start), vec![(Ack { tag: 1, multiple: true }, vec![1])]);
        assert_eq!(plan.next_due(), Some(start + HOLD));
        assert!(plan.due(start + HOLD / 2).is_empty());
        // 2 is slow: 3 goes alone.
        assert_eq!(plan.due(start + HOLD), vec![(Ack { tag: 3, multiple: false }, vec![3])]);
        assert!(plan.is_idle());
        // 2 and 4 finish: one multiple ack named 4 covers 2 (3 is acknowledged already).
        plan.finish(4, start + HOLD);
        plan.finish(2, start + HOLD);
        assert_eq!(plan.due(start + HOLD), vec![(Ack { tag: 4, multiple: true }, vec![2, 4])]);
        // 5 after the floor moved past 3.
        plan.finish(5, start + HOLD);
        assert_eq!(plan.due(start + HOLD), vec![(Ack { tag: 5, multiple: true }, vec![5])]);
    }

    #[test]
    fn a_multiple_ack_never_names_a_message_acknowledged_alone() {
        let start = Instant::now();
        let mut plan = AckPlan::default();
        plan.finish(2, start);
        plan.finish(3, start);
        let alone = plan.due(start + HOLD);
        assert_eq!(alone.len(), 2);
        assert!(alone.iter().all(|(a, _)| !a.multiple));
        // 1 closes the gap: only 1 is left to acknowledge, by its own tag.
        plan.finish(1, start + HOLD);
        assert_eq!(plan.due(start + HOLD), vec![(Ack { tag: 1, multiple: true }, vec![1])]);
        assert!(plan.is_idle());
        assert_eq!(plan.next_due(), None);
    }
}
