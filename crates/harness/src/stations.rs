//! The scenario's receivers, each on its own port so it can be down (nothing listening, so
//! connections are refused) during the windows its scenario gives.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::receiver::{Received, Receiver, Script};
use crate::scenario::Window;

/// One scenario receiver: a scripted [`Receiver`] that can be taken down and brought back on
/// the same address.
pub struct Station {
    /// The scenario's name for it.
    pub name: String,
    addr: SocketAddr,
    scripts: Vec<(String, Script)>,
    state: Mutex<StationState>,
}

struct StationState {
    /// `None` while down.
    running: Option<Receiver>,
    /// What arrived at earlier incarnations.
    history: Vec<Received>,
}

impl Station {
    /// Starts a receiver with `scripts` (path, script).
    pub async fn start(name: &str, scripts: Vec<(String, Script)>) -> anyhow::Result<Station> {
        let receiver = Receiver::start().await?;
        for (path, script) in &scripts {
            receiver.script(path, script.clone());
        }
        Ok(Station {
            name: name.to_string(),
            addr: receiver.addr(),
            scripts,
            state: Mutex::new(StationState { running: Some(receiver), history: Vec::new() }),
        })
    }

    /// The URL of `path` on this station.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops listening (connections are refused from now on).
    pub async fn go_down(&self) {
        let mut state = self.state.lock().await;
        if let Some(receiver) = state.running.take() {
            let received = receiver.received();
            state.history.extend(received);
            receiver.shutdown().await;
            tracing::info!(station = %self.name, "receiver down");
        }
    }

    /// Listens again on the same address. Scripts start over (a `fail_then_ack` fails again).
    pub async fn come_up(&self) -> anyhow::Result<()> {
        let mut state = self.state.lock().await;
        if state.running.is_none() {
            let receiver = Receiver::start_on(self.addr).await?;
            for (path, script) in &self.scripts {
                receiver.script(path, script.clone());
            }
            state.running = Some(receiver);
            tracing::info!(station = %self.name, "receiver up");
        }
        Ok(())
    }

    /// Every request received so far, in every incarnation.
    pub async fn received(&self) -> Vec<Received> {
        let state = self.state.lock().await;
        let mut all = state.history.clone();
        if let Some(r) = &state.running {
            all.extend(r.received());
        }
        all
    }

    /// Takes the station down and up again at `windows`, measured from `origin`.
    pub fn follow(
        self: &Arc<Station>,
        windows: Vec<Window>,
        origin: Instant,
    ) -> JoinHandle<anyhow::Result<()>> {
        let station = Arc::clone(self);
        tokio::spawn(async move {
            for w in windows {
                tokio::time::sleep_until(origin + Duration::from_millis(w.from_ms)).await;
                station.go_down().await;
                tokio::time::sleep_until(origin + Duration::from_millis(w.until_ms)).await;
                station.come_up().await?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receiver::Reply;

    #[tokio::test]
    async fn a_station_refuses_connections_while_down_and_keeps_what_it_received() {
        let station =
            Arc::new(Station::start("s", vec![("/a".into(), Script::always(Reply::ack()))]).await.unwrap());
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let url = station.url("/a");
        assert_eq!(http.post(&url).body("1").send().await.unwrap().status(), 200);
        let origin = Instant::now();
        let follower = station.follow(vec![Window { from_ms: 0, until_ms: 300 }], origin);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let refused = http.post(&url).body("2").send().await.unwrap_err();
        assert!(refused.is_connect(), "{refused:?}");
        follower.await.unwrap().unwrap();
        assert_eq!(http.post(&url).body("3").send().await.unwrap().status(), 200);
        let bodies: Vec<_> = station.received().await.iter().map(|r| r.body.clone()).collect();
        assert_eq!(bodies, ["1", "3"]);
    }
}
