//! The bench's receiver: a minimal HTTP server in its own process (`webhookd bench receiver`),
//! answering `200 ack` to every request and recording when it arrived.
//!
//! It runs apart from the bench so that its CPU time can be read on its own from `/proc`: the
//! report shows it, so a reader can tell whether a figure measured webhookd or the receiver.
//! It records, per request, the mark in the body (see [`crate::events`]), the subscription
//! number from the path (`/r/<n>`) and the receipt time; the bench reads the count
//! (`GET /_bench/count`) and takes the records (`POST /_bench/take`, fixed-size binary rows).
//! It exits when its standard input closes, so it never outlives the bench.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::events::{find_mark, now_ns, Kind};
use crate::procfs;

/// One request as recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// What the mark says it is.
    pub kind: Kind,
    /// The subscription number from the path.
    pub sub: u16,
    /// The mark's number.
    pub seq: u32,
    /// The mark's stamp, unix nanoseconds.
    pub stamp_ns: u64,
    /// When the whole request had arrived, unix nanoseconds.
    pub received_ns: u64,
}

/// Bytes of one receipt on the wire: kind, sub, seq, stamp, received (little-endian).
const ROW: usize = 1 + 2 + 4 + 8 + 8;

impl Receipt {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.kind as u8);
        out.extend_from_slice(&self.sub.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.stamp_ns.to_le_bytes());
        out.extend_from_slice(&self.received_ns.to_le_bytes());
    }

    fn decode(row: &[u8]) -> Option<Receipt> {
        let u64_at = |at: usize| row.get(at..at + 8)?.try_into().ok().map(u64::from_le_bytes);
        Some(Receipt {
            kind: Kind::from_byte(*row.first()?)?,
            sub: u16::from_le_bytes(row.get(1..3)?.try_into().ok()?),
            seq: u32::from_le_bytes(row.get(3..7)?.try_into().ok()?),
            stamp_ns: u64_at(7)?,
            received_ns: u64_at(15)?,
        })
    }
}

#[derive(Default)]
struct Recorded {
    unmarked: AtomicU64,
    rows: Mutex<Vec<u8>>,
}

/// Runs the receiver (the hidden `webhookd bench receiver` command): prints `listening <port>`
/// on stdout, serves until stdin closes.
pub fn serve() -> anyhow::Result<()> {
    // Two workers: enough to keep up with webhookd on this machine without competing with it
    // more than a real receiver elsewhere would.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        println!("listening {port}");
        let recorded = Arc::new(Recorded::default());
        let app = Router::new()
            .route("/_bench/count", get(count))
            .route("/_bench/take", post(take))
            .fallback(receive)
            .with_state(recorded);
        let stdin_closed = async {
            let mut sink = [0u8; 64];
            let mut stdin = tokio::io::stdin();
            while matches!(stdin.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        axum::serve(listener, app).with_graceful_shutdown(stdin_closed).await?;
        anyhow::Ok(())
    })
}

async fn receive(State(recorded): State<Arc<Recorded>>, request: Request) -> Response {
    let sub =
        request.uri().path().strip_prefix("/r/").and_then(|n| n.parse::<u16>().ok()).unwrap_or(u16::MAX);
    let body = match axum::body::to_bytes(request.into_body(), 1 << 20).await {
        Ok(b) => b,
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    };
    let received_ns = now_ns();
    match find_mark(&body) {
        Some(mark) => {
            let receipt =
                Receipt { kind: mark.kind, sub, seq: mark.seq, stamp_ns: mark.stamp_ns, received_ns };
            let mut rows = recorded.rows.lock().unwrap_or_else(|e| e.into_inner());
            receipt.encode(&mut rows);
        }
        None => {
            recorded.unmarked.fetch_add(1, Ordering::Relaxed);
        }
    }
    (StatusCode::OK, "ack").into_response()
}

async fn count(State(recorded): State<Arc<Recorded>>) -> String {
    let held = recorded.rows.lock().unwrap_or_else(|e| e.into_inner()).len() / ROW;
    format!("{held} {}", recorded.unmarked.load(Ordering::Relaxed))
}

async fn take(State(recorded): State<Arc<Recorded>>) -> Bytes {
    let mut rows = recorded.rows.lock().unwrap_or_else(|e| e.into_inner());
    Bytes::from(std::mem::take(&mut *rows))
}

/// The receiver process, seen from the bench.
pub struct ReceiverProcess {
    child: tokio::process::Child,
    port: u16,
    http: reqwest::Client,
}

impl ReceiverProcess {
    /// Starts `exe bench receiver` and waits until it listens.
    pub async fn start(exe: &std::path::Path) -> anyhow::Result<ReceiverProcess> {
        let mut child = tokio::process::Command::new(exe)
            .args(["bench", "receiver"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {} bench receiver", exe.display()))?;
        let stdout = child.stdout.take().context("receiver stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("the receiver did not start within 30 s")??
            .unwrap_or_default();
        let Some(port) = line.strip_prefix("listening ").and_then(|p| p.trim().parse().ok()) else {
            bail!("the receiver printed {line:?} instead of its port");
        };
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build()?;
        Ok(ReceiverProcess { child, port, http })
    }

    /// The url of subscription number `n`.
    pub fn url(&self, n: usize) -> String {
        format!("http://127.0.0.1:{}/r/{n}", self.port)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// CPU time it has used so far.
    pub fn cpu(&self) -> Option<Duration> {
        procfs::cpu_time(self.pid())
    }

    /// Marked requests recorded since the last take, and unmarked requests ever.
    pub async fn count(&self) -> anyhow::Result<(u64, u64)> {
        let text = self
            .http
            .get(format!("http://127.0.0.1:{}/_bench/count", self.port))
            .send()
            .await?
            .text()
            .await?;
        let (marked, unmarked) = text.split_once(' ').context("receiver count")?;
        Ok((marked.parse()?, unmarked.parse()?))
    }

    /// Takes every record so far (the receiver forgets them).
    pub async fn take(&self) -> anyhow::Result<Vec<Receipt>> {
        let bytes = self
            .http
            .post(format!("http://127.0.0.1:{}/_bench/take", self.port))
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        Ok(bytes.chunks_exact(ROW).filter_map(Receipt::decode).collect())
    }

    /// Waits until `n` marked requests are held, or nothing new arrived for `stall`.
    pub async fn wait_for(&self, n: u64, stall: Duration) -> anyhow::Result<()> {
        let mut last = (0, tokio::time::Instant::now());
        loop {
            let (held, _) = self.count().await?;
            if held >= n {
                return Ok(());
            }
            if held != last.0 {
                last = (held, tokio::time::Instant::now());
            } else if last.1.elapsed() > stall {
                bail!("the receiver holds {held} of {n} expected requests and got none for {stall:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_round_trip() {
        let r = Receipt { kind: Kind::Due, sub: 3, seq: 77, stamp_ns: 1, received_ns: u64::MAX };
        let mut bytes = Vec::new();
        r.encode(&mut bytes);
        assert_eq!(bytes.len(), ROW);
        assert_eq!(Receipt::decode(&bytes), Some(r));
    }
}
