//! Filling a data dir before webhookd starts on it, in a process of its own (the hidden
//! `webhookd bench fill-*` commands), so that the load's time and peak memory are its own.
//!
//! Subscriptions go through the store's own write function, `Store::apply_unflushed` (the
//! transaction behind every catalog record; a bulk load flushes once at the end). Pending
//! retries go where webhookd keeps them: the broker's retry tiers, as retry messages
//! (`Delivery::to_retry_message`), each in the tier its wait rounds up to.

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use webhookd_core::delivery::Delivery;
use webhookd_core::event::Event;
use webhookd_core::matching::MatchKey;
use webhookd_core::subscription::{
    ObpWebhook, RaboEventType, RaboStatus, RaboSubscription, Subscription, Target, Trigger,
};
use webhookd_store::{Change, Store};

use crate::events::{event_body, Kind};

/// What a fill did; printed as JSON on stdout by the fill commands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Filled {
    /// Items written.
    pub items: u64,
    /// Seconds, opening the store to the final flush.
    pub seconds: f64,
    /// Peak RSS of the filling process, MiB.
    pub peak_rss_mib: f64,
    /// Size of the store on disk afterwards, MiB.
    pub disk_mib: f64,
}

/// The Rabo per-merchant limit the API applies (the default); bench merchants stay far below it.
const RABO_LIMIT: u32 = 32;

/// Writes `count` subscriptions that no bench event matches: half OBP account webhooks (one
/// account each), half Rabo subscriptions (one merchant each), created as the APIs create them.
pub fn subscriptions(data_dir: &Path, count: u64) -> anyhow::Result<Filled> {
    let started = Instant::now();
    let store = Store::open(&data_dir.join("store"))?;
    let now = now_ms();
    for i in 0..count {
        let url = format!("https://hooks-{i}.example.com/webhooks");
        let subscription = if i % 2 == 0 {
            Subscription::Obp(ObpWebhook {
                account_webhook_id: Uuid::new_v4(),
                bank_id: "bench-bank".into(),
                account_id: format!("acc-{i:07}"),
                trigger: Trigger::OnBalanceChange,
                url,
                http_method: "POST".into(),
                http_protocol: "HTTP/1.1".into(),
                created_by_user_id: "bench".into(),
                is_active: true,
                created_at_ms: now,
            })
        } else {
            Subscription::Rabo(RaboSubscription {
                id: webhookd_core::ids::new_subscription_id(),
                merchant_id: format!("merchant-{i:07}"),
                status: RaboStatus::Enabled,
                url,
                description: Some(format!("unrelated subscription {i}")),
                event_types: vec![RaboEventType::OrderFinalized],
                created_at_ms: now,
            })
        };
        let max_per_owner = matches!(subscription, Subscription::Rabo(_)).then_some(RABO_LIMIT);
        store.apply_unflushed(&Change::Create { subscription, max_per_owner, idempotency: None })?;
    }
    finish(store, count, started)
}

/// A group of stored retries: `count` of `kind`, due evenly from `from_ms` to `to_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Group {
    /// Their mark kind.
    pub kind: Kind,
    /// How many.
    pub count: u64,
    /// Due time of the first, unix milliseconds.
    pub from_ms: u64,
    /// Due time of the last.
    pub to_ms: u64,
}

impl std::str::FromStr for Group {
    type Err = String;
    /// `KIND:COUNT:FROM_MS:TO_MS`, KIND one letter (O, B, L).
    fn from_str(s: &str) -> Result<Group, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let [kind, count, from, to] = parts.as_slice() else {
            return Err(format!("expected KIND:COUNT:FROM_MS:TO_MS, got {s:?}"));
        };
        let number = |t: &str| t.parse::<u64>().map_err(|_| format!("{t:?} is not a number"));
        Ok(Group {
            kind: kind
                .bytes()
                .next()
                .and_then(Kind::from_byte)
                .ok_or_else(|| format!("unknown kind {kind:?}"))?,
            count: number(count)?,
            from_ms: number(from)?,
            to_ms: number(to)?,
        })
    }
}

impl std::fmt::Display for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}:{}", self.kind as u8 as char, self.count, self.from_ms, self.to_ms)
    }
}

/// Where a backlog fill puts its retries: the broker, and webhookd's queue names there.
#[derive(Clone, Debug)]
pub struct RetryQueues {
    /// The broker.
    pub amqp_url: String,
    /// `delivery.retry_queue_prefix` of the webhookd that will send them.
    pub prefix: String,
    /// `delivery.due_queue` of that webhookd.
    pub due_queue: String,
}

/// Confirms awaited together at most, while filling.
const CONFIRM_WINDOW: usize = 1000;

/// Hands pending retries to `url` (each already attempted once, answered 503) to the broker, in
/// groups: one due now goes to the due queue, a later one to the tier its wait rounds up to.
/// Each retry's mark carries the time its tier releases it, so the receiver's records give its
/// lateness.
pub fn backlog(queues: &RetryQueues, url: &str, groups: &[Group]) -> anyhow::Result<Filled> {
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let total = runtime.block_on(hand_over_backlog(queues, url, groups))?;
    let seconds = started.elapsed().as_secs_f64();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    Ok(Filled {
        items: total,
        seconds,
        peak_rss_mib: crate::procfs::peak_rss_bytes(std::process::id()).map_or(0.0, mib),
        disk_mib: 0.0,
    })
}

async fn hand_over_backlog(queues: &RetryQueues, url: &str, groups: &[Group]) -> anyhow::Result<u64> {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    let connection = Connection::connect(&queues.amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let settings = webhookd_delivery::DeliverySettings {
        retry_queue_prefix: queues.prefix.clone(),
        due_queue: queues.due_queue.clone(),
        ..Default::default()
    };
    let tiers = webhookd_delivery::TierQueues::new(
        &settings,
        &webhookd_core::retry::RetryPolicy::default(),
        &webhookd_core::clock::Clock::real(),
    );
    tiers.declare(&channel).await?;
    let now = now_ms();
    let target = Target {
        subscription_id: "wsb_benchbacklog000000".into(),
        url: url.to_string(),
        http_method: "POST".into(),
        http2: false,
        description: None,
    };
    let key =
        MatchKey::Rabo { merchant_id: "bench-backlog".into(), event_type: RaboEventType::OrderFinalized };
    let mut total = 0u64;
    let mut seq = 0u32;
    let mut confirms = Vec::with_capacity(CONFIRM_WINDOW);
    for group in groups {
        let span = group.to_ms.saturating_sub(group.from_ms);
        for i in 0..group.count {
            let asked_ms = group.from_ms + span * i / group.count.max(2).saturating_sub(1).max(1);
            // Released when its tier's TTL ends: that is when it is due.
            let (queue, due_ms) = if asked_ms <= now {
                (tiers.due_queue().to_string(), now)
            } else {
                let wait = asked_ms - now;
                let queue = tiers.queue_for(wait);
                let ttl =
                    tiers.tiers().into_iter().find(|(_, name)| *name == queue).map_or(wait, |(ttl, _)| ttl);
                (queue, now + ttl)
            };
            let body = event_body("bench-backlog", group.kind, seq, due_ms * 1_000_000);
            seq = seq.wrapping_add(1);
            let event = Event::decode(&body, usize::MAX).map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut d = Delivery::new(&event, &key, &target, now, Default::default());
            d.attempts = 1;
            d.last_status = Some(503);
            d.last_error = Some("receiver answered 503".into());
            d.next_attempt_at_ms = Some(due_ms);
            let confirm = channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions { mandatory: true, ..Default::default() },
                    &d.to_retry_message(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await?;
            confirms.push(confirm);
            if confirms.len() == CONFIRM_WINDOW {
                total += confirmed(&mut confirms).await?;
            }
        }
    }
    total += confirmed(&mut confirms).await?;
    crate::amqp::close_within(&connection, "backlog handed over").await;
    Ok(total)
}

/// Awaits every confirm in `confirms`; fails on a refused one.
async fn confirmed(confirms: &mut Vec<lapin::PublisherConfirm>) -> anyhow::Result<u64> {
    let mut n = 0;
    for confirm in confirms.drain(..) {
        anyhow::Context::context(crate::amqp::confirm_within(confirm).await, "a backlog retry")?;
        n += 1;
    }
    Ok(n)
}

fn finish(store: Store, items: u64, started: Instant) -> anyhow::Result<Filled> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(store.flush())?;
    let seconds = started.elapsed().as_secs_f64();
    let disk = store.size_on_disk()?;
    drop(store);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    Ok(Filled {
        items,
        seconds,
        peak_rss_mib: crate::procfs::peak_rss_bytes(std::process::id()).map_or(0.0, mib),
        disk_mib: mib(disk),
    })
}

fn now_ms() -> u64 {
    crate::events::now_ns() / 1_000_000
}
