//! Sessions with the broker, one connection each, one after another until shutdown: how the
//! catalog applier and the delivery log follower stay connected.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// A session that lasted this long was healthy: the backoff before the next one starts over.
pub const HEALTHY_SESSION: Duration = Duration::from_secs(30);

/// The longest wait between two sessions.
const MAX_DELAY: Duration = Duration::from_secs(5);

/// Runs `session` until `shutdown`, and again after each error that `is_final` does not call
/// final, waiting a jittered backoff (100 ms to 5 s, started over after a healthy session);
/// `ended` runs after every session. Ok at shutdown or when a session ends without error; the
/// final error otherwise (the caller says why it stopped).
pub async fn run_sessions<E, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    mut session: F,
    is_final: fn(&E) -> bool,
    mut ended: impl FnMut(),
) -> Result<(), E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(MAX_DELAY)
        .with_jitter()
        .without_max_times();
    let mut delays = backoff.build();
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            _ = shutdown.cancelled() => Ok(()),
            result = session() => result,
        };
        ended();
        let e = match result {
            Ok(()) => return Ok(()),
            Err(e) if is_final(&e) => return Err(e),
            Err(e) => e,
        };
        if started.elapsed() >= HEALTHY_SESSION {
            delays = backoff.build();
        }
        let delay = delays.next().unwrap_or(MAX_DELAY);
        warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "{what} lost the broker");
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[derive(Debug, PartialEq)]
    enum Failure {
        Lost,
        Final,
    }

    impl std::fmt::Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }

    async fn cancel_after(shutdown: &CancellationToken, after: Duration) {
        tokio::time::sleep(after).await;
        shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_follow_each_other_until_a_final_error() {
        let (sessions, ends) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let result = run_sessions(
            "test",
            &shutdown,
            || async {
                match sessions.fetch_add(1, Ordering::SeqCst) {
                    0 | 1 => Err(Failure::Lost),
                    _ => Err(Failure::Final),
                }
            },
            |e| *e == Failure::Final,
            || {
                ends.fetch_add(1, Ordering::SeqCst);
            },
        )
        .await;
        assert_eq!(result, Err(Failure::Final));
        assert_eq!((sessions.load(Ordering::SeqCst), ends.load(Ordering::SeqCst)), (3, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_a_session_and_the_wait_between_sessions() {
        let shutdown = CancellationToken::new();
        let waiting = run_sessions(
            "test",
            &shutdown,
            || async { std::future::pending::<Result<(), Failure>>().await },
            |_| false,
            || {},
        );
        let (result, ()) = tokio::join!(waiting, cancel_after(&shutdown, Duration::from_secs(1)));
        assert_eq!(result, Ok(()));

        let shutdown = CancellationToken::new();
        let lost = AtomicUsize::new(0);
        let retrying = run_sessions(
            "test",
            &shutdown,
            || async {
                lost.fetch_add(1, Ordering::SeqCst);
                Err(Failure::Lost)
            },
            |_| false,
            || {},
        );
        let (result, ()) = tokio::join!(retrying, cancel_after(&shutdown, Duration::from_secs(60)));
        assert_eq!(result, Ok(()));
        // At most 5 s between sessions: a minute holds a dozen of them or more.
        assert!(lost.load(Ordering::SeqCst) >= 12, "{}", lost.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn the_backoff_starts_over_after_a_healthy_session() {
        let starts = std::sync::Mutex::new(Vec::new());
        let shutdown = CancellationToken::new();
        let result = run_sessions(
            "test",
            &shutdown,
            || async {
                let n = {
                    let mut starts = starts.lock().unwrap();
                    starts.push(Instant::now());
                    starts.len()
                };
                match n {
                    // Five quick losses: the waits grow to 1.6 s or more.
                    1..=5 => Err(Failure::Lost),
                    // A healthy session, then a loss: the next wait is short again.
                    6 => {
                        tokio::time::sleep(HEALTHY_SESSION + Duration::from_secs(1)).await;
                        Err(Failure::Lost)
                    }
                    _ => Err(Failure::Final),
                }
            },
            |e| *e == Failure::Final,
            || {},
        )
        .await;
        assert_eq!(result, Err(Failure::Final));
        let starts = starts.into_inner().unwrap();
        let before_healthy = starts[5] - starts[4];
        let after_healthy = starts[6] - starts[5] - HEALTHY_SESSION - Duration::from_secs(1);
        assert!(before_healthy >= Duration::from_millis(1_600), "{before_healthy:?}");
        assert!(after_healthy < Duration::from_millis(400), "{after_healthy:?}");
    }
}
