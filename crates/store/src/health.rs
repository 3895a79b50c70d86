//! Which subscriptions are failing, and since when: for auto-disabling (Rabo: "a subscription
//! may be disabled after repeated failure").
//!
//! One small entry per failing subscription: written at the first failure after a success,
//! removed at the next success. A sweep therefore reads only the failing subscriptions.

use crate::{Result, Store};

impl Store {
    /// Records the outcomes of attempts, in the order they were made, for their subscriptions.
    /// Each subscription costs at most a removal and a write, however many attempts it had.
    pub fn note_attempts<'a>(&self, attempts: impl IntoIterator<Item = (&'a str, bool, u64)>) -> Result<()> {
        for (subscription_id, streak) in streaks(attempts) {
            if streak.succeeded {
                self.failing.remove(subscription_id.as_bytes())?;
            }
            if let Some(since_ms) = streak.failing_since_ms {
                // Only the first failure since the last success sets the time.
                let _ = self.failing.compare_and_swap(
                    subscription_id.as_bytes(),
                    None as Option<&[u8]>,
                    Some(&since_ms.to_be_bytes()[..]),
                )?;
            }
        }
        Ok(())
    }

    /// Subscriptions whose attempts have all failed since before `before_ms`.
    pub fn failing_since_before(&self, before_ms: u64) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for item in self.failing.iter() {
            let (key, value) = item?;
            let since = value.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
            if since < before_ms {
                out.push((String::from_utf8_lossy(&key).into_owned(), since));
            }
        }
        Ok(out)
    }

    /// Forgets a subscription's failure streak (after it was disabled).
    pub fn clear_failing(&self, subscription_id: &str) -> Result<()> {
        self.failing.remove(subscription_id.as_bytes())?;
        Ok(())
    }
}

/// What a run of attempts says about one subscription.
#[derive(Debug, Default, PartialEq, Eq)]
struct Streak {
    /// Whether one of them succeeded (a streak before it ends).
    succeeded: bool,
    /// When the first failure after the last success was made, if one was.
    failing_since_ms: Option<u64>,
}

/// Attempts (subscription, succeeded, when), in order, folded per subscription.
fn streaks<'a>(attempts: impl IntoIterator<Item = (&'a str, bool, u64)>) -> Vec<(&'a str, Streak)> {
    let mut out: Vec<(&'a str, Streak)> = Vec::new();
    let mut at_of = std::collections::HashMap::new();
    for (subscription_id, succeeded, at_ms) in attempts {
        let at = *at_of.entry(subscription_id).or_insert_with(|| {
            out.push((subscription_id, Streak::default()));
            out.len() - 1
        });
        let streak = &mut out[at].1;
        if succeeded {
            *streak = Streak { succeeded: true, failing_since_ms: None };
        } else if streak.failing_since_ms.is_none() {
            streak.failing_since_ms = Some(at_ms);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_attempts_keeps_the_last_success_and_the_first_failure_after_it() {
        let attempts = [
            ("a", false, 1),
            ("b", true, 2),
            ("a", true, 3),
            ("a", false, 4),
            ("a", false, 5),
            ("c", false, 6),
        ];
        let folded = streaks(attempts);
        assert_eq!(
            folded,
            vec![
                ("a", Streak { succeeded: true, failing_since_ms: Some(4) }),
                ("b", Streak { succeeded: true, failing_since_ms: None }),
                ("c", Streak { succeeded: false, failing_since_ms: Some(6) }),
            ]
        );
    }

    #[test]
    fn noting_a_batch_leaves_what_noting_each_attempt_would() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.note_attempts([("old", false, 10)]).unwrap();
        // An older streak is kept; a success ends one; a failure after it starts a new one.
        store
            .note_attempts([("old", false, 20), ("new", false, 30), ("new", true, 40), ("new", false, 50)])
            .unwrap();
        assert_eq!(
            store.failing_since_before(u64::MAX).unwrap(),
            vec![("new".into(), 50), ("old".into(), 10)]
        );
        store.note_attempts([("new", true, 60), ("old", true, 70)]).unwrap();
        assert!(store.failing_since_before(u64::MAX).unwrap().is_empty());
    }
}
