//! Which subscriptions are failing, and since when: for auto-disabling (Rabo: "a subscription
//! may be disabled after repeated failure").
//!
//! One small entry per failing subscription: written at the first failure after a success,
//! removed at the next success. A sweep therefore reads only the failing subscriptions.

use crate::{Result, Store};

impl Store {
    /// Records the outcome of an attempt for its subscription.
    pub fn note_attempt(&self, subscription_id: &str, succeeded: bool, now_ms: u64) -> Result<()> {
        if succeeded {
            if self.failing.contains_key(subscription_id.as_bytes())? {
                self.failing.remove(subscription_id.as_bytes())?;
            }
        } else {
            // Only the first failure since the last success sets the time.
            let _ = self.failing.compare_and_swap(
                subscription_id.as_bytes(),
                None as Option<&[u8]>,
                Some(&now_ms.to_be_bytes()[..]),
            )?;
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
