//! Deliveries waiting for their first attempt: what the ingest waits on, so that taking events
//! in cannot run ahead of delivering them without bound.
//!
//! Counted in memory: deliveries this process created, minus first attempts it claimed. After a
//! restart the deliveries created before it are not counted, so the bound is exceeded by at
//! most what was waiting then, once.

use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::Notify;

/// The count and its wake-up.
#[derive(Debug, Default)]
pub struct Unclaimed {
    count: AtomicI64,
    claimed: Notify,
}

impl Unclaimed {
    /// Deliveries created and not yet claimed for a first attempt (negative after a restart,
    /// while deliveries created before it are claimed).
    pub fn count(&self) -> i64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Waits until at most `limit` are waiting.
    pub async fn wait_at_most(&self, limit: i64) {
        loop {
            // Registered before the check, so a claim between the check and the wait wakes us.
            let claimed = self.claimed.notified();
            tokio::pin!(claimed);
            claimed.as_mut().enable();
            if self.count() <= limit {
                return;
            }
            claimed.await;
        }
    }

    pub(crate) fn created(&self, n: usize) {
        self.count.fetch_add(n as i64, Ordering::Relaxed);
    }

    pub(crate) fn claimed(&self, n: usize) {
        if n > 0 {
            self.count.fetch_sub(n as i64, Ordering::Relaxed);
            self.claimed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn waits_until_claims_bring_it_down_to_the_limit() {
        let unclaimed = Arc::new(Unclaimed::default());
        unclaimed.created(10);
        unclaimed.wait_at_most(10).await;
        let waiter = tokio::spawn({
            let u = unclaimed.clone();
            async move { u.wait_at_most(4).await }
        });
        unclaimed.claimed(5);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "5 still waiting, above the limit of 4");
        unclaimed.claimed(1);
        tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert_eq!(unclaimed.count(), 4);
    }
}
