//! A scripted HTTP receiver on loopback for integration tests and the replay harness.
//!
//! [`Receiver::start`] binds `127.0.0.1` on a random port and answers every method on every path.
//! Each path follows a [`Script`]: a list of [`Reply`]s used once each, in order, and then one
//! reply used forever; a path without a script answers `200 ack`. Every request is recorded as a
//! [`Received`] *before* it is answered, together with the status it is about to get (`0` for
//! [`Reply::Hang`]), so a test can look at what arrived with [`Receiver::received`] or wait for it
//! with [`Receiver::wait_for`].
//!
//! Shutting a receiver down (or dropping it) stops the accept loop and closes every connection it
//! holds, idle keep-alive ones and hanging requests included, so a client sees connection errors
//! afterwards, as it would from a receiver that went down. [`Receiver::start_on`] brings a receiver
//! back up on the same address.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

/// The largest request body the receiver reads; larger bodies are answered with 413.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// How long [`Receiver::start_on`] keeps retrying while the address is still held by a receiver
/// that was just dropped.
const REBIND_PATIENCE: Duration = Duration::from_secs(2);

/// How long [`Receiver::shutdown`] waits for open connections to close.
const DRAIN_PATIENCE: Duration = Duration::from_secs(2);

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    /// The request method, e.g. `POST`.
    pub method: String,
    /// The request path without the query string, e.g. `/hooks/a`.
    pub path: String,
    /// The request headers in arrival order, names in lowercase.
    pub headers: Vec<(String, String)>,
    /// The request body.
    pub body: Bytes,
    /// When the request arrived.
    pub at: SystemTime,
    /// The status the receiver answered (or is about to answer); `0` for [`Reply::Hang`].
    pub status_sent: u16,
}

impl Received {
    /// The first value of the header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, or `None` when it is not JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// What the receiver answers on one path.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Answer this status with this body.
    Status {
        /// The HTTP status code (an invalid code is answered as 500).
        status: u16,
        /// The response body.
        body: String,
    },
    /// Answer this status with this body after a delay.
    Delay {
        /// How long to wait before answering.
        after: Duration,
        /// The HTTP status code (an invalid code is answered as 500).
        status: u16,
        /// The response body.
        body: String,
    },
    /// Accept the request and never answer (until the receiver is shut down or dropped).
    Hang,
    /// Answer this status with this body and these extra headers (e.g. `Retry-After`, `Location`).
    Headers {
        /// The HTTP status code (an invalid code is answered as 500).
        status: u16,
        /// The response body.
        body: String,
        /// Extra response headers; invalid ones and framing headers are skipped.
        headers: Vec<(String, String)>,
    },
}

impl Reply {
    /// A `200` with this body.
    pub fn ok(body: &str) -> Reply {
        Reply::Status { status: 200, body: body.to_owned() }
    }

    /// This status with an empty body.
    pub fn status(code: u16) -> Reply {
        Reply::Status { status: code, body: String::new() }
    }

    /// A `200` with the body `ack`, the default answer.
    pub fn ack() -> Reply {
        Reply::ok("ack")
    }
}

/// A script for one path: replies used in order, then `then` forever (or, with
/// `random_fail`, `then` mixed with a failure drawn at random).
#[derive(Clone, Debug)]
pub struct Script {
    /// Replies used once each, in order.
    pub first: Vec<Reply>,
    /// The reply used once `first` is exhausted.
    pub then: Reply,
    /// Once `first` is exhausted, answer this failure instead of `then` at random.
    pub random_fail: Option<RandomFail>,
}

/// A failure answered at random, reproducibly (seeded).
#[derive(Clone, Debug)]
pub struct RandomFail {
    /// The share of requests that fail, 0.0 to 1.0.
    pub rate: f64,
    /// The failure.
    pub reply: Reply,
    /// Seed of the draws, so a run can be repeated.
    pub seed: u64,
}

impl Script {
    /// Always answer `r`.
    pub fn always(r: Reply) -> Script {
        Script { first: Vec::new(), then: r, random_fail: None }
    }

    /// Answer `fail` `n` times, then `then` forever.
    pub fn fail_then(n: usize, fail: Reply, then: Reply) -> Script {
        Script { first: vec![fail; n], then, random_fail: None }
    }

    /// Answer `fail` for a share `rate` of the requests, drawn with `seed`, and `then` otherwise.
    pub fn random(rate: f64, fail: Reply, then: Reply, seed: u64) -> Script {
        let rate = rate.clamp(0.0, 1.0);
        Script { first: Vec::new(), then, random_fail: Some(RandomFail { rate, reply: fail, seed }) }
    }
}

/// A script and how far along it a path is.
#[derive(Debug)]
struct ScriptState {
    script: Script,
    used: usize,
    rng: StdRng,
}

impl ScriptState {
    fn new(script: Script) -> ScriptState {
        let seed = script.random_fail.as_ref().map_or(0, |r| r.seed);
        ScriptState { script, used: 0, rng: StdRng::seed_from_u64(seed) }
    }

    /// The reply for the next request, advancing the script.
    fn next_reply(&mut self) -> Reply {
        if let Some(reply) = self.script.first.get(self.used) {
            self.used += 1;
            return reply.clone();
        }
        match &self.script.random_fail {
            Some(random) if self.rng.gen_bool(random.rate) => random.reply.clone(),
            _ => self.script.then.clone(),
        }
    }
}

/// Everything the receiver records, behind one lock.
#[derive(Debug, Default)]
struct Inner {
    scripts: HashMap<String, ScriptState>,
    received: Vec<Received>,
}

/// State shared between the [`Receiver`] handle, the request handler and the connections.
#[derive(Debug, Default)]
struct Shared {
    state: Mutex<Inner>,
    /// Woken whenever a request is recorded.
    arrived: Notify,
    /// The number of connections currently open.
    open_conns: AtomicUsize,
    /// Woken whenever the last open connection closes.
    drained: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The recorded requests on `path` (all of them when `None`), in arrival order.
    fn matching(&self, path: Option<&str>) -> Vec<Received> {
        let state = self.lock();
        match path {
            None => state.received.clone(),
            Some(p) => state.received.iter().filter(|r| r.path == p).cloned().collect(),
        }
    }

    /// Records a request and wakes every waiter.
    fn record(&self, received: Received) {
        self.lock().received.push(received);
        self.arrived.notify_waiters();
    }
}

/// What the request handler needs.
#[derive(Clone)]
struct App {
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
}

/// A running receiver on 127.0.0.1 with a random port.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Receiver {
    /// Starts a receiver on `127.0.0.1` with a random port; every path answers `200 ack`.
    pub async fn start() -> anyhow::Result<Receiver> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts a receiver on a fixed address, e.g. the one of a receiver that was just shut down.
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<Receiver> {
        let listener = bind(addr).await?;
        let addr = listener.local_addr().context("reading the receiver's local address")?;
        let shared = Arc::new(Shared::default());
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let app = App { shared: Arc::clone(&shared), shutdown: shutdown_rx.clone() };
        let router = Router::new().fallback(handle).with_state(app);
        let listener =
            ClosingListener { inner: listener, shared: Arc::clone(&shared), shutdown: shutdown_rx };
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::warn!(error = %e, "receiver stopped serving");
            }
        });
        tracing::debug!(%addr, "receiver started");
        Ok(Receiver { addr, shared, shutdown: shutdown_tx, task: Some(task) })
    }

    /// The address the receiver listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL of `path` on this receiver, e.g. `http://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, normalize_path(path))
    }

    /// Sets (or replaces, starting over) the script for an exact path, for any method.
    pub fn script(&self, path: &str, script: Script) {
        self.shared.lock().scripts.insert(normalize_path(path), ScriptState::new(script));
    }

    /// Every request received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.matching(None)
    }

    /// The requests received so far on an exact path, in arrival order.
    pub fn received_on(&self, path: &str) -> Vec<Received> {
        self.shared.matching(Some(&normalize_path(path)))
    }

    /// Waits until at least `count` requests arrived (on `path` if given) and returns them all;
    /// fails with how many arrived when `timeout` passes first.
    pub async fn wait_for(
        &self,
        path: Option<&str>,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Received>> {
        let path = path.map(normalize_path);
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        loop {
            let notified = self.shared.arrived.notified();
            tokio::pin!(notified);
            // Register before looking, so an arrival between the look and the await is not lost.
            notified.as_mut().enable();
            let matching = self.shared.matching(path.as_deref());
            if matching.len() >= count {
                return Ok(matching);
            }
            let woken = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, notified).await.is_ok(),
                None => {
                    notified.await;
                    true
                }
            };
            if !woken {
                let matching = self.shared.matching(path.as_deref());
                if matching.len() >= count {
                    return Ok(matching);
                }
                let on = path.as_deref().map_or_else(|| "on any path".to_owned(), |p| format!("on {p}"));
                anyhow::bail!(
                    "timed out after {timeout:?} waiting for {count} request(s) {on} at {}: \
                     only {} arrived",
                    self.addr,
                    matching.len()
                );
            }
        }
    }

    /// Stops accepting, closes every open connection and frees the address.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            task.abort();
            // The listener is dropped with the task; a cancelled task is the expected outcome.
            let _ = task.await;
        }
        let drained = async {
            loop {
                let notified = self.shared.drained.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.shared.open_conns.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(DRAIN_PATIENCE, drained).await.is_err() {
            tracing::warn!(
                addr = %self.addr,
                open = self.shared.open_conns.load(Ordering::Acquire),
                "receiver connections still open after shutdown"
            );
        }
        tracing::debug!(addr = %self.addr, "receiver shut down");
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // Connections notice the signal on their own; the task drops the listener when aborted.
        self.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Binds `addr`, retrying for a while when a just-dropped receiver still holds it.
async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let give_up = tokio::time::Instant::now() + REBIND_PATIENCE;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && tokio::time::Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("binding the receiver to {addr}"));
            }
        }
    }
}

/// `path` with a leading slash.
fn normalize_path(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    }
}

/// Answers every request: read the body, pick the reply, record, then answer.
async fn handle(State(app): State<App>, request: Request) -> Response {
    let at = SystemTime::now();
    let (parts, body) = request.into_parts();
    let method = parts.method.as_str().to_owned();
    let path = parts.uri.path().to_owned();
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| {
            (name.as_str().to_ascii_lowercase(), String::from_utf8_lossy(value.as_bytes()).into_owned())
        })
        .collect();
    let mut received = Received { method, path, headers, body: Bytes::new(), at, status_sent: 0 };

    let reply = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => {
            received.body = bytes;
            let mut state = app.shared.lock();
            state.scripts.get_mut(&received.path).map_or_else(Reply::ack, ScriptState::next_reply)
        }
        Err(e) => {
            // The script is not consumed: this request never reached the "application".
            let too_large = error_chain_mentions(&e, "length limit");
            tracing::debug!(error = %e, too_large, "receiver could not read a request body");
            if too_large {
                Reply::Status { status: 413, body: format!("request body larger than {MAX_BODY} bytes") }
            } else {
                Reply::Status { status: 400, body: "could not read the request body".to_owned() }
            }
        }
    };

    let mut shutdown = app.shutdown;
    match reply {
        Reply::Status { status, body } => {
            let status = status_code(status);
            received.status_sent = status.as_u16();
            app.shared.record(received);
            response(status, body, &[])
        }
        Reply::Headers { status, body, headers } => {
            let status = status_code(status);
            received.status_sent = status.as_u16();
            app.shared.record(received);
            response(status, body, &headers)
        }
        Reply::Delay { after, status, body } => {
            let status = status_code(status);
            received.status_sent = status.as_u16();
            app.shared.record(received);
            tokio::select! {
                () = tokio::time::sleep(after) => {}
                _ = shutdown.wait_for(|down| *down) => {}
            }
            response(status, body, &[])
        }
        Reply::Hang => {
            received.status_sent = 0;
            app.shared.record(received);
            // Wait for shutdown; the connection refuses to write by then, so this never reaches
            // the client.
            let _ = shutdown.wait_for(|down| *down).await;
            response(StatusCode::SERVICE_UNAVAILABLE, String::new(), &[])
        }
    }
}

/// Whether `e` or any of its sources mentions `needle` in its message.
fn error_chain_mentions(e: &(dyn std::error::Error + 'static), needle: &str) -> bool {
    let mut current = Some(e);
    while let Some(err) = current {
        if err.to_string().contains(needle) {
            return true;
        }
        current = err.source();
    }
    false
}

/// `code` as a status, 500 when it is not a valid one.
fn status_code(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or_else(|_| {
        tracing::warn!(code, "scripted status is not a valid HTTP status; answering 500");
        StatusCode::INTERNAL_SERVER_ERROR
    })
}

/// Builds a response, skipping invalid and framing headers.
fn response(status: StatusCode, body: String, headers: &[(String, String)]) -> Response {
    let has_body = !body.is_empty();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let map = response.headers_mut();
    if has_body {
        map.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    }
    let mut replaced = Vec::new();
    for (name, value) in headers {
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value))
        else {
            tracing::warn!(%name, %value, "skipping an invalid scripted header");
            continue;
        };
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            tracing::warn!(%name, "skipping a scripted framing header");
            continue;
        }
        // A scripted header replaces a default one; repeated scripted headers are all sent.
        if !replaced.contains(&name) {
            map.remove(&name);
            replaced.push(name.clone());
        }
        map.append(name, value);
    }
    response
}

/// The receiver's listener: hands out connections that close when the receiver shuts down.
struct ClosingListener {
    inner: TcpListener,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
}

impl axum::serve::Listener for ClosingListener {
    type Io = ClosingConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    return (ClosingConn::new(stream, &self.shared, self.shutdown.clone()), peer);
                }
                Err(e) => match e.kind() {
                    io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::Interrupted => {}
                    _ => {
                        // E.g. out of file descriptors: back off instead of spinning.
                        tracing::warn!(error = %e, "receiver accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Resolves once the receiver shuts down (or its handle is gone).
type ShutdownSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A connection that fails every read and write once the receiver shuts down, so the server
/// drops it (closing the socket) even when it sits idle in keep-alive.
struct ClosingConn {
    stream: TcpStream,
    /// `None` once the signal fired.
    signal: Option<ShutdownSignal>,
    _open: OpenConn,
}

impl ClosingConn {
    fn new(stream: TcpStream, shared: &Arc<Shared>, mut shutdown: watch::Receiver<bool>) -> Self {
        let signal: ShutdownSignal = Box::pin(async move {
            // An error means the sender is gone, which is a shutdown too.
            let _ = shutdown.wait_for(|down| *down).await;
        });
        ClosingConn { stream, signal: Some(signal), _open: OpenConn::new(shared) }
    }

    /// Whether the receiver shut down; registers for a wake-up when it has not.
    fn closed(&mut self, cx: &mut Context<'_>) -> bool {
        match &mut self.signal {
            None => true,
            Some(signal) => {
                if signal.as_mut().poll(cx).is_ready() {
                    self.signal = None;
                    true
                } else {
                    false
                }
            }
        }
    }
}

fn shut_down_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "receiver shut down")
}

impl AsyncRead for ClosingConn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closed(cx) {
            return Poll::Ready(Err(shut_down_error()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClosingConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.closed(cx) {
            return Poll::Ready(Err(shut_down_error()));
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.closed(cx) {
            return Poll::Ready(Err(shut_down_error()));
        }
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closed(cx) {
            return Poll::Ready(Err(shut_down_error()));
        }
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Counts a connection as open for as long as it lives.
struct OpenConn {
    shared: Arc<Shared>,
}

impl OpenConn {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.open_conns.fetch_add(1, Ordering::AcqRel);
        OpenConn { shared: Arc::clone(shared) }
    }
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        if self.shared.open_conns.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.drained.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(timeout: Duration) -> reqwest::Client {
        reqwest::Client::builder().no_proxy().timeout(timeout).build().expect("building the test client")
    }

    #[tokio::test]
    async fn records_a_posted_body_with_its_headers() {
        let receiver = Receiver::start().await.unwrap();
        let response = client(Duration::from_secs(5))
            .post(receiver.url("/hooks/a?x=1"))
            .header("Content-Type", "application/json")
            .header("X-Signature", "v1,abc")
            .body(r#"{"id":"evt_1","amount":12}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(response.text().await.unwrap(), "ack");

        let all = receiver.received();
        assert_eq!(all.len(), 1);
        let got = &all[0];
        assert_eq!(got.method, "POST");
        assert_eq!(got.path, "/hooks/a");
        assert_eq!(got.status_sent, 200);
        assert_eq!(got.header("content-type"), Some("application/json"));
        assert_eq!(got.header("X-SIGNATURE"), Some("v1,abc"));
        assert!(got.headers.iter().all(|(n, _)| *n == n.to_lowercase()));
        assert_eq!(got.body.as_ref(), br#"{"id":"evt_1","amount":12}"#);
        assert_eq!(got.json(), Some(serde_json::json!({"id": "evt_1", "amount": 12})));
        assert_eq!(receiver.received_on("hooks/a").len(), 1);
        assert!(receiver.received_on("/other").is_empty());
        receiver.shutdown().await;
    }

    #[tokio::test]
    async fn fail_then_answers_in_order_and_records_statuses() {
        let receiver = Receiver::start().await.unwrap();
        receiver.script("/flaky", Script::fail_then(2, Reply::status(503), Reply::ack()));
        let client = client(Duration::from_secs(5));
        let mut answered = Vec::new();
        for _ in 0..3 {
            let response = client.post(receiver.url("/flaky")).body("x").send().await.unwrap();
            answered.push(response.status().as_u16());
        }
        assert_eq!(answered, [503, 503, 200]);
        let recorded: Vec<u16> = receiver.received_on("/flaky").iter().map(|r| r.status_sent).collect();
        assert_eq!(recorded, [503, 503, 200]);
    }

    #[tokio::test]
    async fn headers_reply_sends_its_headers() {
        let receiver = Receiver::start().await.unwrap();
        receiver.script(
            "/limited",
            Script::always(Reply::Headers {
                status: 429,
                body: "slow down".to_owned(),
                headers: vec![
                    ("Retry-After".to_owned(), "7".to_owned()),
                    ("bad header".to_owned(), "x".to_owned()),
                ],
            }),
        );
        let response = client(Duration::from_secs(5)).get(receiver.url("/limited")).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 429);
        assert_eq!(response.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("7"));
        assert_eq!(response.text().await.unwrap(), "slow down");
    }

    #[tokio::test]
    async fn delay_answers_after_the_delay() {
        let receiver = Receiver::start().await.unwrap();
        receiver.script(
            "/slow",
            Script::always(Reply::Delay {
                after: Duration::from_millis(250),
                status: 202,
                body: "late".to_owned(),
            }),
        );
        let started = std::time::Instant::now();
        let response = client(Duration::from_secs(5)).post(receiver.url("/slow")).send().await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert_eq!(response.status().as_u16(), 202);
        assert_eq!(response.text().await.unwrap(), "late");
        assert_eq!(receiver.received_on("/slow")[0].status_sent, 202);
    }

    #[tokio::test]
    async fn hang_makes_the_client_time_out() {
        let receiver = Receiver::start().await.unwrap();
        receiver.script("/hang", Script::always(Reply::Hang));
        let err = client(Duration::from_millis(300))
            .post(receiver.url("/hang"))
            .body("x")
            .send()
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "expected a timeout, got {err:?}");
        let got = receiver.received_on("/hang");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].status_sent, 0);
    }

    #[tokio::test]
    async fn shutdown_ends_a_hanging_request() {
        let receiver = Receiver::start().await.unwrap();
        receiver.script("/hang", Script::always(Reply::Hang));
        let url = receiver.url("/hang");
        let pending = tokio::spawn(async move { client(Duration::from_secs(30)).post(url).send().await });
        receiver.wait_for(Some("/hang"), 1, Duration::from_secs(5)).await.unwrap();
        receiver.shutdown().await;
        let result = tokio::time::timeout(Duration::from_secs(5), pending)
            .await
            .expect("the hanging request should end when the receiver shuts down")
            .unwrap();
        assert!(result.is_err(), "expected a connection error, got {result:?}");
    }

    #[tokio::test]
    async fn wait_for_returns_once_enough_arrived() {
        let receiver = Receiver::start().await.unwrap();
        let url = receiver.url("/later");
        let sender = tokio::spawn(async move {
            let client = client(Duration::from_secs(5));
            for _ in 0..2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                client.post(&url).send().await.unwrap();
            }
        });
        let got = receiver.wait_for(Some("/later"), 2, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got.len(), 2);
        sender.await.unwrap();
        let any = receiver.wait_for(None, 2, Duration::from_millis(10)).await.unwrap();
        assert_eq!(any.len(), 2);
    }

    #[tokio::test]
    async fn wait_for_times_out_with_the_count() {
        let receiver = Receiver::start().await.unwrap();
        client(Duration::from_secs(5)).post(receiver.url("/one")).send().await.unwrap();
        let err = receiver.wait_for(Some("/one"), 3, Duration::from_millis(100)).await.unwrap_err();
        let message = err.to_string();
        assert!(message.contains("only 1 arrived"), "{message}");
        assert!(message.contains("3 request(s)"), "{message}");
    }

    #[tokio::test]
    async fn start_on_the_same_address_after_shutdown() {
        let first = Receiver::start().await.unwrap();
        let addr = first.addr();
        let url = first.url("/hook");
        let client = client(Duration::from_secs(5));
        assert_eq!(client.post(&url).send().await.unwrap().status().as_u16(), 200);
        first.shutdown().await;
        // The pooled keep-alive connection was closed too: the receiver is really down.
        assert!(client.post(&url).send().await.is_err());

        let second = Receiver::start_on(addr).await.unwrap();
        assert_eq!(second.addr(), addr);
        second.script("/hook", Script::always(Reply::ok("back")));
        let response = client.post(&url).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(response.text().await.unwrap(), "back");
        assert_eq!(second.received_on("/hook").len(), 1);

        // Dropping frees the address too.
        drop(second);
        let third = Receiver::start_on(addr).await.unwrap();
        assert_eq!(client.post(&url).send().await.unwrap().status().as_u16(), 200);
        assert_eq!(third.received().len(), 1);
    }

    #[tokio::test]
    async fn odd_input_does_not_panic() {
        let receiver = Receiver::start().await.unwrap();
        receiver.script("/odd", Script::always(Reply::status(1000)));
        let client = client(Duration::from_secs(5));
        let response = client
            .request(reqwest::Method::from_bytes(b"PURGE").unwrap(), receiver.url("/odd"))
            .header("x-bytes", reqwest::header::HeaderValue::from_bytes(b"caf\xe9").unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 500);
        let got = &receiver.received_on("/odd")[0];
        assert_eq!(got.method, "PURGE");
        assert_eq!(got.status_sent, 500);
        assert!(got.header("x-bytes").is_some());
        assert_eq!(got.json(), None);
        // A timeout too large for the clock is no problem when enough already arrived.
        let got = receiver.wait_for(None, 1, Duration::MAX).await.unwrap();
        assert_eq!(got.len(), 1);
    }

    #[tokio::test]
    async fn oversized_body_is_refused_and_recorded() {
        let receiver = Receiver::start().await.unwrap();
        let big = vec![b'a'; MAX_BODY + 1];
        let response = client(Duration::from_secs(30)).post(receiver.url("/big")).body(big).send().await;
        // The server may close before the client finishes sending; either outcome is fine as
        // long as a 413 was recorded.
        if let Ok(response) = response {
            assert_eq!(response.status().as_u16(), 413);
        }
        let got = receiver.wait_for(Some("/big"), 1, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got[0].status_sent, 413);
        assert!(got[0].body.is_empty());
    }
}
