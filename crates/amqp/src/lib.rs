//! What webhookd's broker clients (the event ingestion, the catalog, the delivery log) share.
//!
//! lapin has no timeouts of its own, and after an I/O error it leaves some replies unsettled
//! (a close sent as the socket was reset waited forever). So every step with the broker is
//! bounded in time ([`Link::within`]) and also ends as soon as lapin reports the connection
//! broken ([`Link`]'s watch on the connection's events).

pub mod sessions;
pub mod stream;
pub mod topology;

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::{Channel, Connection};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{info, warn};

/// How long a stopping part waits for the broker to answer its connection close, ms. Past it
/// the socket is dropped: the broker hands back what was not acknowledged either way, and a
/// stop must fit the grace the platform gives (a node that does not answer would otherwise
/// hold it for a whole broker timeout).
pub const CLOSE_MS: u64 = 2_000;

/// Why a bounded step with the broker did not complete.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The broker connection or channel failed.
    #[error("AMQP: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker did not answer in time.
    #[error("the broker did not answer ({step}) within {ms} ms")]
    Timeout {
        /// What was waited for.
        step: &'static str,
        /// How long, milliseconds.
        ms: u64,
    },
    /// lapin reported the connection broken while the step waited on it.
    #[error("the broker connection broke ({step}): {reason}")]
    Broken {
        /// What was waited for.
        step: &'static str,
        /// lapin's error, as reported.
        reason: String,
    },
}

/// A broker connection, and the watch that notices when lapin reports it broken.
pub struct Link {
    /// The connection.
    pub connection: Connection,
    /// Cancelled once lapin reports an error on the connection.
    pub broken: CancellationToken,
    reason: Arc<OnceLock<String>>,
    /// Every channel opened through [`Link::channel`], closed one by one before the connection.
    channels: Mutex<Vec<Channel>>,
    _watch: AbortOnDropHandle<()>,
}

impl Link {
    /// Watches `connection` (resource alarms are logged on the way).
    pub fn new(connection: Connection) -> Link {
        let broken = CancellationToken::new();
        let reason = Arc::new(OnceLock::new());
        let mut events = connection.events_listener();
        // An error before the listener existed is not sent to it; the status still shows it.
        let errored_before = connection.status().errored();
        let watch = tokio::spawn({
            let (broken, reason) = (broken.clone(), reason.clone());
            async move {
                if errored_before {
                    let _ = reason.set("the connection failed as it was opened".to_string());
                    broken.cancel();
                    return;
                }
                while let Some(event) = events.next().await {
                    match event {
                        lapin::Event::Error(e) => {
                            let _ = reason.set(e.to_string());
                            broken.cancel();
                            return;
                        }
                        // A resource alarm on the broker: publishes wait.
                        lapin::Event::ConnectionBlocked(why) => {
                            warn!(reason = %why, "the broker blocked the connection")
                        }
                        lapin::Event::ConnectionUnblocked => info!("the broker unblocked the connection"),
                        _ => {}
                    }
                }
            }
        });
        Link {
            connection,
            broken,
            reason,
            channels: Mutex::new(Vec::new()),
            _watch: AbortOnDropHandle::new(watch),
        }
    }

    /// Opens a channel that [`Link::close`] closes before the connection.
    pub async fn channel(&self) -> lapin::Result<Channel> {
        let channel = self.connection.create_channel().await?;
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        channels.retain(|c| c.status().connected());
        channels.push(channel.clone());
        Ok(channel)
    }

    /// Closes the link at a stop, within [`CLOSE_MS`] in all: its open channels first, then the
    /// connection. A channel whose last handle is dropped is closed by lapin in the background;
    /// when that close met the connection's own close, lapin logged a connection error at every
    /// clean stop. Closed first, dropped handles have nothing left to close.
    pub async fn close(&self, reason: &str) {
        if self.broken.is_cancelled() {
            return;
        }
        let open: Vec<Channel> = {
            let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
            channels.drain(..).filter(|c| c.status().connected()).collect()
        };
        let closing = async {
            // All at once: one round trip, leaving the budget to the connection's close.
            futures_util::future::join_all(open.iter().map(|c| c.close(200, reason.into()))).await;
            self.connection.close(200, reason.into()).await
        };
        let _ = self.within("close", CLOSE_MS, closing).await;
    }

    /// Why the connection broke, once it did.
    pub fn reason(&self) -> String {
        self.reason.get().cloned().unwrap_or_default()
    }

    /// Waits at most `ms` for one step with the broker, and no longer than this link stays
    /// unbroken.
    pub async fn within<T>(
        &self,
        step: &'static str,
        ms: u64,
        work: impl std::future::Future<Output = lapin::Result<T>>,
    ) -> Result<T, StepError> {
        within(Some(self), step, ms, work).await
    }
}

/// Waits at most `ms` for one step with the broker, and, given a `link`, no longer than it stays
/// unbroken (without one: a connection being made).
pub async fn within<T>(
    link: Option<&Link>,
    step: &'static str,
    ms: u64,
    work: impl std::future::Future<Output = lapin::Result<T>>,
) -> Result<T, StepError> {
    let broken = async {
        match link {
            Some(link) => link.broken.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        result = tokio::time::timeout(Duration::from_millis(ms), work) => match result {
            Ok(result) => Ok(result?),
            Err(_) => {
                warn!(step, timeout_ms = ms, "the broker did not answer; dropping the connection");
                Err(StepError::Timeout { step, ms })
            }
        },
        _ = broken => Err(StepError::Broken { step, reason: link.map(Link::reason).unwrap_or_default() }),
    }
}
