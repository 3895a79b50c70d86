//! While the store cannot be written (disk full, read-only file system): answer "not ready",
//! and reopen the store once it can be written again.
//!
//! sled keeps failing after one I/O error, so the running parts stop (nothing more is
//! acknowledged: messages stay in RabbitMQ; the API refuses changes) and the store is reopened
//! from scratch once a probe write succeeds. Everything acknowledged before is on disk.

use std::path::Path;
use std::time::Duration;

use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use backon::{ExponentialBuilder, Retryable};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use webhookd_api::error::ApiError;
use webhookd_store::Store;

/// The longest wait between two tries to reopen the store.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

/// Serves "not ready" on `listen` and retries the store in `dir` until a probe write succeeds
/// (`true`) or `shutdown` (`false`).
pub async fn wait_for_store(
    listen: &str,
    dir: &Path,
    reason: String,
    shutdown: &CancellationToken,
) -> anyhow::Result<bool> {
    let stop_serving = shutdown.child_token();
    let server = serve_not_ready(listen, reason, stop_serving.clone()).await?;
    let reopen = || async {
        // sled must not be opened on a full disk: its open writes a snapshot, and a failed write
        // leaves an empty snapshot file that stops every later open. So: room first.
        let owned = dir.to_path_buf();
        tokio::task::spawn_blocking(move || room_for_store(&owned)).await??;
        let store = Store::open(dir)?;
        store.probe().await?;
        // Dropped here: the caller opens the store again for the parts.
        anyhow::Ok(())
    };
    let retries = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(MAX_RETRY_DELAY)
        .without_max_times();
    let reopened = tokio::select! {
        _ = shutdown.cancelled() => false,
        result = reopen.retry(retries).notify(|e, delay| {
            warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "the store still cannot be written")
        }) => result.is_ok(),
    };
    stop_serving.cancel();
    let _ = server.await;
    if reopened {
        info!("the store can be written again; resuming");
    }
    Ok(reopened)
}

/// Space the disk must have before the store is reopened.
const HEADROOM: usize = 16 * 1024 * 1024;

/// Checks that [`HEADROOM`] bytes can be written (and synced) next to the store, and removes
/// empty sled snapshot files (left by a failed write; they hold nothing, and sled rebuilds its
/// snapshot from the log).
fn room_for_store(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let probe = dir.join(".webhookd-space-probe");
    let written = (|| {
        let mut file = std::fs::File::create(&probe)?;
        let block = vec![0u8; 1024 * 1024];
        for _ in 0..HEADROOM / block.len() {
            file.write_all(&block)?;
        }
        file.sync_all()
    })();
    let _ = std::fs::remove_file(&probe);
    written?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("snap.") && entry.metadata()?.len() == 0 {
            warn!(file = %entry.path().display(), "removing an empty sled snapshot left by a failed write");
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Answers `/healthz` (alive), `/readyz` (503 with the reason) and 503 for everything else.
async fn serve_not_ready(
    listen: &str,
    reason: String,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let detail = format!("the store cannot be written: {reason}");
    let not_ready = detail.clone();
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(move || async move { (StatusCode::SERVICE_UNAVAILABLE, not_ready) }))
        .fallback(move |uri: Uri| async move { unavailable(&uri, &detail) });
    Ok(tokio::spawn(async move {
        let serving = axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned());
        if let Err(e) = serving.await {
            warn!(error = %e, "the not-ready server failed");
        }
    }))
}

/// 503 in the error format of the API the path belongs to.
fn unavailable(uri: &Uri, detail: &str) -> Response {
    if uri.path().starts_with("/obp/") {
        ApiError::obp(StatusCode::SERVICE_UNAVAILABLE, "OBP-50000: Unknown Error.").into_response()
    } else {
        ApiError::problem(StatusCode::SERVICE_UNAVAILABLE, detail).into_response()
    }
}
