//! What a client may send and how slowly: the bounds that keep one hostile or broken client
//! from holding memory, sockets or tasks that others need.
//!
//! | what | bound | enforced by | answer |
//! |---|---|---|---|
//! | request line and headers, transport | 64 KiB | hyper (`max_header_size`) | bare 431, connection closed |
//! | request URI | 8 KiB | [`check_head`] | 414 in the API's format |
//! | header names and values | 16 KiB | [`check_head`] | 431 in the API's format |
//! | time to send the request line and headers | 10 s | hyper (`header_read_timeout`) | connection closed |
//! | idle keep-alive connection | 10 s | the same timer, restarted when idle | connection closed |
//! | request body | 64 KiB | tower-http `RequestBodyLimitLayer`, [`buffer_body`] | 413 |
//! | time to send the body | 10 s | [`buffer_body`] | 408 |
//! | time to answer a request | 60 s | tower-http `TimeoutLayer` | 503 |
//! | open connections | 1024 | [`serve`]'s accept loop | later ones wait in the backlog |
//!
//! The 60 s bound covers the slowest legitimate request, Rabo's `verify`, which waits for the
//! receiver up to `delivery.timeout_ms` (30 s by default, as Rabo's acknowledgement rule says).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::error::{ApiError, Format};

/// Largest request body accepted; subscription requests are a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest request URI accepted (path and query).
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most bytes of header names and values together that a request may carry.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Hyper's hard cap on the request line and headers: beyond it hyper answers a bare 431 and
/// closes, before any route is known. Above [`MAX_HEADER_BYTES`] so that a request between
/// the two still gets an answer in its API's format.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Time a client has to send its request line and headers (also the keep-alive idle time).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send its whole body, once the headers are in.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the server has to answer a request, body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Most connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 1024;

/// The detail of a 413.
pub fn body_too_large() -> String {
    format!("the request body is larger than {MAX_BODY_BYTES} bytes, the most webhookd accepts")
}

/// The detail of a 503 from the request timeout.
pub fn request_too_slow() -> String {
    format!("the request was not completed within {} s", REQUEST_TIMEOUT.as_secs())
}

/// Middleware: refuses a request whose URI or headers are larger than the API accepts, before
/// any handler looks at them.
pub async fn check_head(request: Request, next: Next) -> Response {
    let format = Format::of_path(request.uri().path());
    let uri_len = request.uri().to_string().len();
    if uri_len > MAX_URI_BYTES {
        let detail = format!("the request URI is {uri_len} bytes long; at most {MAX_URI_BYTES} are accepted");
        return ApiError::refused(format, StatusCode::URI_TOO_LONG, detail).into_response();
    }
    let header_len: usize = request.headers().iter().map(|(n, v)| n.as_str().len() + v.len()).sum();
    if header_len > MAX_HEADER_BYTES {
        let detail =
            format!("the request headers take {header_len} bytes; at most {MAX_HEADER_BYTES} are accepted");
        return ApiError::refused(format, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, detail)
            .into_response();
    }
    next.run(request).await
}

/// Middleware: reads the whole body, at most [`MAX_BODY_BYTES`] within [`BODY_READ_TIMEOUT`],
/// before the handler runs. A client that trickles its body cannot hold a handler (and its
/// store or DNS work) open; the handler gets the body already in memory.
pub async fn buffer_body(request: Request, next: Next) -> Response {
    let format = Format::of_path(request.uri().path());
    let (parts, body) = request.into_parts();
    let read = axum::body::to_bytes(body, MAX_BODY_BYTES);
    let bytes = match tokio::time::timeout(BODY_READ_TIMEOUT, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) if is_length_limit(&e) => {
            return ApiError::refused(format, StatusCode::PAYLOAD_TOO_LARGE, body_too_large()).into_response()
        }
        Ok(Err(e)) => {
            let detail = format!("the request body could not be read: {e}");
            return ApiError::refused(format, StatusCode::BAD_REQUEST, detail).into_response();
        }
        Err(_) => {
            let detail =
                format!("the request body was not received within {} s", BODY_READ_TIMEOUT.as_secs());
            return ApiError::refused(format, StatusCode::REQUEST_TIMEOUT, detail).into_response();
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

/// Whether a body error is a length limit (ours, or tower-http's `Limited` body's, each wrapped).
fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Serves `app` on `listener` over HTTP/1.1 (inside TLS when `tls` is given) with the
/// connection-level bounds above, until `shutdown`; then stops accepting and waits for the
/// connections' requests to finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<crate::tls::Tls>,
    shutdown: CancellationToken,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            () = shutdown.cancelled() => break,
        };
        let Ok(slot) = slot else { break }; // the semaphore is never closed
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin; a
                    // connection aborted before it was accepted is no reason to stop.
                    tracing::warn!(error = %e, "cannot accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let Some(tls) = &tls else {
            let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                drop(slot);
            });
            continue;
        };
        // The handshake runs in the connection's task, bounded, so a slow client holds only its own.
        let (acceptor, http, watcher) = (tls.acceptor(), http.clone(), graceful.watcher());
        tokio::spawn(async move {
            match tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let connection = watcher.watch(http.serve_connection(TokioIo::new(stream), service));
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "HTTPS connection ended with an error");
                    }
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
