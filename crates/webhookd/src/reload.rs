//! What changes while webhookd runs without a restart: the signing keys (and the JWKS with
//! them) and the API listener's TLS certificate. Each is read again when its files change
//! (checked every few seconds) and at once on SIGHUP. A reload that fails keeps what is in use
//! and says why.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use webhookd_core::signing::SharedKeys;

use crate::keys::KeySource;

/// SIGHUPs received so far: every reloader wakes on each.
pub fn hangups(shutdown: CancellationToken) -> watch::Receiver<u64> {
    let (count, hangups) = watch::channel(0u64);
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut signal) => {
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        received = signal.recv() => {
                            if received.is_none() {
                                return;
                            }
                            info!("SIGHUP: reloading signing keys and the TLS certificate");
                            count.send_modify(|n| *n += 1);
                        }
                    }
                }
            });
        }
        Err(e) => warn!(error = %e, "cannot listen for SIGHUP; files are still checked for changes"),
    }
    hangups
}

/// The contents of `files` now (a missing file reads as empty), to notice a change.
fn fingerprint(files: &[PathBuf]) -> Vec<Vec<u8>> {
    files.iter().map(|f| std::fs::read(f).unwrap_or_default()).collect()
}

/// Waits for the next reason to look again: the check interval (`every_ms`, 0: never), a
/// SIGHUP (true: reload even if the files look the same), or the stop (`None`).
async fn next_check(
    every_ms: u64,
    hangups: &mut watch::Receiver<u64>,
    shutdown: &CancellationToken,
) -> Option<bool> {
    let tick = async {
        if every_ms == 0 {
            std::future::pending::<()>().await
        } else {
            tokio::time::sleep(Duration::from_millis(every_ms)).await
        }
    };
    // No SIGHUP listener (it could not be set up): only the interval.
    let hangup = async {
        if hangups.changed().await.is_err() {
            std::future::pending::<()>().await
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => None,
        _ = hangup => Some(true),
        _ = tick => Some(false),
    }
}

/// Calls `reload` whenever `files` change (checked every `every_ms`) and on each SIGHUP, until
/// `shutdown`. `reload` puts the new state in place and says what changed (`None`: nothing); a
/// failure keeps what is in use and is logged once until a reload works again (or a SIGHUP
/// asks for one).
async fn watch_files(
    what: &'static str,
    files: Vec<PathBuf>,
    every_ms: u64,
    mut hangups: watch::Receiver<u64>,
    shutdown: CancellationToken,
    mut reload: impl FnMut() -> anyhow::Result<Option<String>>,
) {
    let mut seen = fingerprint(&files);
    let mut failing = false;
    while let Some(forced) = next_check(every_ms, &mut hangups, &shutdown).await {
        let now = fingerprint(&files);
        if !forced && now == seen {
            continue;
        }
        seen = now;
        match reload() {
            Ok(changed) => {
                failing = false;
                if let Some(changed) = changed {
                    info!("{what} reloaded: {changed}");
                }
            }
            Err(e) if !failing || forced => {
                failing = true;
                warn!(error = format!("{e:#}"), "cannot reload the {what}; the one in use stays");
            }
            Err(_) => {}
        }
    }
}

/// Keeps `keys` equal to what `source` holds: checked every `every_ms` and on each SIGHUP.
pub async fn reload_keys(
    source: KeySource,
    keys: SharedKeys,
    every_ms: u64,
    hangups: watch::Receiver<u64>,
    shutdown: CancellationToken,
) {
    let files = source.watched().into_iter().collect();
    let records = |r: &webhookd_core::signing::KeyRing| serde_json::to_vec(r.records()).unwrap_or_default();
    watch_files("signing keys", files, every_ms, hangups, shutdown, || {
        let ring = source.reload()?;
        if records(&ring) == records(&keys.current()) {
            return Ok(None);
        }
        let signer = ring.signer();
        let changed = format!(
            "new signatures use ed25519 kid {} and es256 kid {}; the JWKS lists {} keys",
            signer.ed25519_kid(),
            signer.es256_kid(),
            ring.records().len()
        );
        keys.replace(ring);
        Ok(Some(changed))
    })
    .await
}

/// Keeps the API listener's certificate equal to its files: checked every `every_ms` and on
/// each SIGHUP. New connections get the new certificate; open ones keep theirs.
pub async fn reload_tls(
    tls: webhookd_api::tls::Tls,
    every_ms: u64,
    hangups: watch::Receiver<u64>,
    shutdown: CancellationToken,
) {
    let files = tls.files().to_vec();
    let cert = files[0].display().to_string();
    watch_files("TLS certificate", files, every_ms, hangups, shutdown, || {
        tls.reload()?;
        Ok(Some(format!("{cert}; new connections use it")))
    })
    .await
}
