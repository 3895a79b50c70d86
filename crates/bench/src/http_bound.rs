//! Item 2, the HTTP bound: the bodies webhookd would deliver, POSTed straight to the receiver
//! with reqwest at webhookd's concurrency, with no queue and no store.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;

use crate::events::{event_body, now_ns, rendered, Kind};
use crate::receiver::ReceiverProcess;

/// What the HTTP bound measured.
#[derive(Clone, Copy, Debug)]
pub struct HttpRun {
    /// Requests per second.
    pub requests_per_s: f64,
    /// Receiver CPU, percent of one core, over the run.
    pub receiver_cpu_percent: f64,
    /// CPU the whole machine spent per request (client and receiver; anything else running
    /// is counted too).
    pub machine_cpu_us_per_request: f64,
}

/// Sends `events` x `k` requests (event i to subscription j's url, its rendered envelope) with
/// `concurrency` requests in flight, through a client built like webhookd's (keep-alive pool
/// sized to the concurrency, no proxy, `TCP_NODELAY`).
pub async fn http_bound(
    receiver: &ReceiverProcess,
    events: u32,
    k: usize,
    concurrency: usize,
) -> anyhow::Result<HttpRun> {
    // Rendered up front, so the timed part only sends.
    let mut requests = Vec::with_capacity(events as usize * k);
    for i in 0..events {
        let body = event_body("bench-http", Kind::Direct, i, now_ns());
        for j in 0..k {
            let url = receiver.url(j);
            let (headers, envelope) = rendered(&body, &format!("wsb_bench{j:017}"), &url)?;
            requests.push((url, headers, envelope));
        }
    }
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?;
    receiver.take().await?;
    let requests = Arc::new(requests);
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = receiver.cpu();
    let busy = crate::procfs::machine_busy();
    let started = std::time::Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, requests, next) = (client.clone(), requests.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((url, headers, body)) = requests.get(i) else { return anyhow::Ok(()) };
                let mut request = client.post(url);
                for (name, value) in headers {
                    request = request.header(name.as_str(), value.as_str());
                }
                let response = request.body(body.clone()).send().await?;
                let status = response.status();
                let text = response.bytes().await?;
                if status != reqwest::StatusCode::OK || text.as_ref() != b"ack" {
                    bail!("the receiver answered {status}");
                }
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    let wall = started.elapsed();
    let cpu_after = receiver.cpu();
    let busy_after = crate::procfs::machine_busy();
    let received = receiver.take().await?;
    if received.len() != requests.len() {
        bail!("the receiver recorded {} of {} requests", received.len(), requests.len());
    }
    Ok(HttpRun {
        requests_per_s: requests.len() as f64 / wall.as_secs_f64(),
        receiver_cpu_percent: crate::procfs::cpu_percent(cpu_before, cpu_after, wall),
        machine_cpu_us_per_request: crate::procfs::micros_per(busy, busy_after, requests.len() as u64),
    })
}
