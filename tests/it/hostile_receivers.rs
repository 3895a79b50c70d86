//! Receivers that misbehave on purpose: one accepts the connection and never answers, one
//! streams an endless body, one drips its answer a byte at a time, one redirects to a private
//! address. Each attempt ends in bounded time having read a bounded amount, and no redirect is
//! followed. (Memory: at most `delivery.response_body_max_bytes` of a body is ever read.)

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use uuid::Uuid;
use webhookd_core::delivery::DeliveryState;
use webhookd_core::subscription::Trigger;
use webhookd_harness::receiver::{Receiver, Reply, Script};

use crate::support::*;

/// What a hostile server does once it has read a request head.
#[derive(Clone, Copy)]
enum Hostility {
    /// Never answers.
    Silent,
    /// `200` with an endless chunked body.
    EndlessBody,
    /// `200` with a body sent one byte every 200 ms, forever.
    Drip,
}

/// Serves every connection on a fresh port with `hostility`; returns the URL.
async fn hostile(hostility: Hostility) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                // Read until the end of the head (the body is small and arrives with it).
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                match hostility {
                    Hostility::Silent => {
                        // Hold the connection open, say nothing.
                        let _ = socket.read(&mut buf).await;
                    }
                    Hostility::EndlessBody => {
                        let start = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
                        if socket.write_all(start).await.is_err() {
                            return;
                        }
                        let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "x".repeat(64 * 1024));
                        while socket.write_all(chunk.as_bytes()).await.is_ok() {}
                    }
                    Hostility::Drip => {
                        let start = b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n";
                        if socket.write_all(start).await.is_err() {
                            return;
                        }
                        loop {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            if socket.write_all(b"a").await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    format!("http://{addr}/hook")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_receivers_cost_bounded_time_and_memory_and_redirects_are_not_followed() {
    let receiver = Receiver::start().await.unwrap();
    // Redirects to a private address and to another (allowed) path of ours: neither is followed.
    receiver.script(
        "/to-metadata",
        Script::always(Reply::Headers {
            status: 302,
            body: String::new(),
            headers: vec![("location".into(), "http://169.254.169.254/latest/meta-data/".into())],
        }),
    );
    receiver.script(
        "/to-loopback",
        Script::always(Reply::Headers {
            status: 307,
            body: String::new(),
            headers: vec![("location".into(), receiver.url("/target"))],
        }),
    );
    let names = Names::new("hostile-receivers");
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&names, &amqp_url(), dir.path());
    c.retry.retries = 0;
    c.delivery.timeout_ms = 1_500;
    let timeout = Duration::from_millis(c.delivery.timeout_ms);
    let body_max = c.delivery.response_body_max_bytes;
    let node = Node::start(c).await;

    let urls = [
        ("acc-silent", hostile(Hostility::Silent).await),
        ("acc-endless", hostile(Hostility::EndlessBody).await),
        ("acc-drip", hostile(Hostility::Drip).await),
        ("acc-metadata", receiver.url("/to-metadata")),
        ("acc-loopback", receiver.url("/to-loopback")),
    ];
    let publisher = Publisher::connect(&amqp_url(), &names.exchange).await;
    let mut subs = Vec::new();
    let mut events = Vec::new();
    for (account, url) in &urls {
        let s = obp(account, Trigger::OnBalanceChange, url);
        node.put(s.clone()).await;
        let event = Uuid::new_v4();
        publisher.event(&balance_event(event, account, "1.00")).await;
        subs.push(s);
        events.push(event);
    }
    let [silent, endless, drip, metadata, loopback] = &subs[..] else { unreachable!() };

    // Silent: cut off at the attempt timeout, then (no retries left) failed.
    let d = node.wait_state(events[0], &silent.id(), DeliveryState::Failed).await;
    let attempt = &node.store.attempts_of(&d.id).unwrap()[0];
    assert_eq!(attempt.status, None);
    assert!(attempt.duration_ms >= timeout.as_millis() as u64 - 50, "{attempt:?}");
    assert!(attempt.duration_ms < timeout.as_millis() as u64 + 5_000, "{attempt:?}");

    // Endless body: the status is enough for OBP (2xx = delivered); at most body_max bytes read,
    // and the attempt ends although the body never does.
    let d = node.wait_state(events[1], &endless.id(), DeliveryState::Delivered).await;
    let attempt = &node.store.attempts_of(&d.id).unwrap()[0];
    assert_eq!(attempt.status, Some(200));
    assert!(attempt.response_excerpt.len() <= body_max, "{}", attempt.response_excerpt.len());
    assert!(attempt.duration_ms < timeout.as_millis() as u64 + 5_000, "{attempt:?}");

    // Drip: the whole exchange, body included, is bounded by the attempt timeout; an answer
    // that does not finish in time is a failed attempt (retried while the schedule lasts).
    let d = node.wait_state(events[2], &drip.id(), DeliveryState::Failed).await;
    let attempt = &node.store.attempts_of(&d.id).unwrap()[0];
    assert!(attempt.error.as_deref().unwrap_or_default().contains("timed out"), "{attempt:?}");
    assert!(attempt.duration_ms >= timeout.as_millis() as u64 - 50, "{attempt:?}");
    assert!(attempt.duration_ms < timeout.as_millis() as u64 + 5_000, "{attempt:?}");

    // Redirects: never followed; for OBP a 3xx means misconfigured.
    node.wait_state(events[3], &metadata.id(), DeliveryState::Misconfigured).await;
    node.wait_state(events[4], &loopback.id(), DeliveryState::Misconfigured).await;
    assert!(receiver.received_on("/target").is_empty(), "a redirect was followed");
    assert_eq!(receiver.received_on("/to-metadata").len(), 1);
    assert_eq!(receiver.received_on("/to-loopback").len(), 1);
    node.stop().await;
}
