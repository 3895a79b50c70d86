//! Publishing bench events, the broker bound (item 1), and cleaning up a run's topology.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use webhookd_ingest::AmqpSettings;

use crate::events::{event_body, now_ns, Kind, ROUTING_KEY};

/// Most publishes awaiting their broker confirmation at once.
pub const MAX_UNCONFIRMED: usize = 1000;

/// Longest wait for one publisher confirm or a connection's close: a broker that stops
/// answering (an alarm, a stuck node) fails the bench with a reason instead of hanging it.
pub const BROKER_PATIENCE: Duration = Duration::from_secs(60);

/// Awaits a publisher confirm, at most [`BROKER_PATIENCE`]; fails unless the broker acked.
pub async fn confirm_within(confirm: lapin::PublisherConfirm) -> anyhow::Result<()> {
    let answer = tokio::time::timeout(BROKER_PATIENCE, confirm)
        .await
        .with_context(|| format!("the broker did not confirm a publish within {BROKER_PATIENCE:?}"))??;
    confirmed(answer)
}

/// Closes `connection`, waiting at most [`BROKER_PATIENCE`] for the broker's answer.
pub async fn close_within(connection: &Connection, reason: &str) {
    let _ = tokio::time::timeout(BROKER_PATIENCE, connection.close(200, reason.into())).await;
}

/// Exchange, queue and dead-letter names of one run, with webhookd's other amqp settings.
pub fn settings_for(base: &AmqpSettings, url: &str, tag: &str) -> AmqpSettings {
    AmqpSettings {
        url: url.to_string(),
        exchange: format!("bench.{tag}.events"),
        queue: format!("bench.{tag}.events"),
        dead_letter_exchange: format!("bench.{tag}.dead"),
        dead_letter_queue: format!("bench.{tag}.dead"),
        ..base.clone()
    }
}

/// What a publisher did: when its first and last events were stamped.
#[derive(Clone, Copy, Debug, Default)]
pub struct Published {
    /// Events published (all confirmed).
    pub count: u32,
    /// Stamp of the first, unix nanoseconds.
    pub first_ns: u64,
    /// Stamp of the last.
    pub last_ns: u64,
}

/// Publishes `count` events for `merchant` (numbered from `first_seq`) as persistent messages
/// with publisher confirms, up to [`MAX_UNCONFIRMED`] in flight; at `rate` events per second
/// when given, else as fast as the broker confirms. Each event is stamped just before it is
/// handed to the client.
pub async fn publish(
    url: &str,
    exchange: &str,
    merchant: &str,
    kind: Kind,
    first_seq: u32,
    count: u32,
    rate: Option<f64>,
) -> anyhow::Result<Published> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let properties =
        BasicProperties::default().with_delivery_mode(2).with_content_type("application/json".into());
    let start = tokio::time::Instant::now();
    let mut waiting = VecDeque::with_capacity(MAX_UNCONFIRMED);
    let mut published = Published { count, ..Published::default() };
    for i in 0..count {
        if let Some(rate) = rate {
            tokio::time::sleep_until(start + Duration::from_secs_f64(f64::from(i) / rate)).await;
        }
        let stamp = now_ns();
        if i == 0 {
            published.first_ns = stamp;
        }
        published.last_ns = stamp;
        let body = event_body(merchant, kind, first_seq + i, stamp);
        let confirm = channel
            .basic_publish(
                exchange.into(),
                ROUTING_KEY.into(),
                BasicPublishOptions::default(),
                &body,
                properties.clone(),
            )
            .await?;
        waiting.push_back(confirm);
        if waiting.len() >= MAX_UNCONFIRMED {
            if let Some(c) = waiting.pop_front() {
                confirm_within(c).await?;
            }
        }
    }
    for c in waiting {
        confirm_within(c).await?;
    }
    close_within(&connection, "bench published").await;
    Ok(published)
}

/// Ok for a plain ack; a nack, or a message the broker returned (no queue took it), fails.
fn confirmed(c: Confirmation) -> anyhow::Result<()> {
    match c {
        Confirmation::Ack(None) => Ok(()),
        other => bail!("the broker did not take a publish: {other:?}"),
    }
}

/// Item 1: publishes `count` events and, at the same time, consumes them from a queue declared
/// exactly as webhookd declares its own (same topology code, prefetch and batch size), taking
/// what is waiting up to `batch_max` and acknowledging each batch with one multiple ack, as
/// webhookd does, and nothing else.
pub async fn broker_bound(settings: &AmqpSettings, count: u32) -> anyhow::Result<BrokerRun> {
    let connection = Connection::connect(&settings.url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    webhookd_ingest::topology::declare(&channel, settings).await?;
    let mut consumer = webhookd_ingest::topology::consume(&channel, settings, "bench").await?;
    let batch_max = settings.batch_max;
    let consuming = tokio::spawn(async move {
        let mut consumed = 0u32;
        while consumed < count {
            let first = tokio::time::timeout(Duration::from_secs(60), consumer.next())
                .await
                .context("no message for 60 s")?
                .context("the consumer ended")??;
            let mut last = first.delivery_tag;
            let mut n = 1;
            while n < batch_max {
                match consumer.next().now_or_never() {
                    Some(Some(Ok(m))) => {
                        last = m.delivery_tag;
                        n += 1;
                    }
                    _ => break,
                }
            }
            channel.basic_ack(last, BasicAckOptions { multiple: true }).await?;
            consumed += n as u32;
        }
        anyhow::Ok(now_ns())
    });
    let busy = crate::procfs::machine_busy();
    let published =
        publish(&settings.url, &settings.exchange, "bench-broker", Kind::Direct, 0, count, None).await?;
    let done_ns = consuming.await??;
    let busy_after = crate::procfs::machine_busy();
    close_within(&connection, "bench consumed").await;
    delete_topology(settings).await;
    Ok(BrokerRun {
        events_per_s: f64::from(count) / ((done_ns.saturating_sub(published.first_ns)) as f64 / 1e9),
        machine_cpu_us_per_event: crate::procfs::micros_per(busy, busy_after, u64::from(count)),
    })
}

/// What one run of the broker bound measured.
#[derive(Clone, Copy, Debug)]
pub struct BrokerRun {
    /// Events per second, first publish to last ack.
    pub events_per_s: f64,
    /// CPU the whole machine spent per event (broker, publisher and consumer; anything else
    /// running is counted too).
    pub machine_cpu_us_per_event: f64,
}

/// Removes a run's queues and exchanges (best effort: the bench must not fill the broker).
/// The retry tier prefix and due queue webhookd gets beside `settings`' queue.
pub fn retry_queues(settings: &AmqpSettings) -> (String, String) {
    (format!("{}.retry", settings.queue), format!("{}.due", settings.queue))
}

/// The catalog and delivery log streams webhookd gets beside `settings`' queue.
pub fn streams(settings: &AmqpSettings) -> (String, String) {
    (format!("{}.catalog", settings.queue), format!("{}.log", settings.queue))
}

/// Deletes a run's queues and exchanges; best effort, at most a few minutes (a broker that
/// stops answering leaves them behind rather than hanging the bench).
pub async fn delete_topology(settings: &AmqpSettings) {
    let _ = tokio::time::timeout(BROKER_PATIENCE * 3, delete_topology_now(settings)).await;
}

async fn delete_topology_now(settings: &AmqpSettings) {
    let Ok(connection) = Connection::connect(&settings.url, ConnectionProperties::default()).await else {
        return;
    };
    if let Ok(channel) = connection.create_channel().await {
        let (prefix, due) = retry_queues(settings);
        let tiers = webhookd_delivery::TierQueues::new(
            &webhookd_delivery::DeliverySettings {
                retry_queue_prefix: prefix,
                due_queue: due.clone(),
                ..Default::default()
            },
            &webhookd_core::retry::RetryPolicy::default(),
            &webhookd_core::clock::Clock::real(),
        );
        let (catalog, log) = streams(settings);
        let mut queues = vec![settings.queue.clone(), settings.dead_letter_queue.clone(), due, catalog, log];
        queues.extend(tiers.tiers().into_iter().map(|(_, name)| name));
        for queue in &queues {
            let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
        }
        for exchange in [&settings.exchange, &settings.dead_letter_exchange] {
            let _ = channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
        }
    }
    close_within(&connection, "bench cleaned up").await;
}
