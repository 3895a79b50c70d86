//! Shared helpers: configuration, an in-process node, a publisher, events and subscriptions.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use webhookd::{App, Config, Running};
use webhookd_core::delivery::{Delivery, DeliveryState};
use webhookd_core::subscription::{
    ObpWebhook, RaboEventType, RaboStatus, RaboSubscription, Subscription, Trigger,
};
use webhookd_store::{Change, Store};

/// How long a test waits for what it expects before it calls it a hang. Tests wait for an
/// event (a delivery, a state, a count), never for a timing: this bound only has to be longer
/// than anything a loaded 2-core machine takes, so it is far longer than an idle run needs.
pub const HANG: Duration = Duration::from_secs(180);

/// The broker of the test run.
pub fn amqp_url() -> String {
    std::env::var("WEBHOOKD_TEST_AMQP_URL").expect(
        "WEBHOOKD_TEST_AMQP_URL is not set: run the tests with scripts/test.sh, which starts a broker",
    )
}

/// Exchange and queue names of one test.
#[derive(Clone, Debug)]
pub struct Names {
    pub exchange: String,
    pub queue: String,
    pub dead_exchange: String,
    pub dead_queue: String,
    pub catalog: String,
    pub retry: String,
    pub due: String,
    pub log: String,
}

impl Names {
    pub fn new(test: &str) -> Names {
        let tag = &Uuid::new_v4().simple().to_string()[..8];
        let base = format!("it.{test}.{tag}");
        Names {
            exchange: format!("{base}.events"),
            queue: format!("{base}.events"),
            dead_exchange: format!("{base}.dead"),
            dead_queue: format!("{base}.dead"),
            catalog: format!("{base}.catalog"),
            retry: format!("{base}.retry"),
            due: format!("{base}.due"),
            log: format!("{base}.log"),
        }
    }
}

/// A test configuration: fast retries, short timeouts, own names and data dir.
pub fn config(names: &Names, amqp_url: &str, data_dir: &Path) -> Config {
    let mut c = Config::load_with_env(None, Vec::<(String, String)>::new()).unwrap();
    c.data_dir = data_dir.to_path_buf();
    c.http.listen = "127.0.0.1:0".into();
    c.amqp.url = amqp_url.into();
    c.amqp.exchange = names.exchange.clone();
    c.amqp.queue = names.queue.clone();
    c.amqp.dead_letter_exchange = names.dead_exchange.clone();
    c.amqp.dead_letter_queue = names.dead_queue.clone();
    c.catalog.stream = names.catalog.clone();
    c.delivery.retry_queue_prefix = names.retry.clone();
    c.delivery.due_queue = names.due.clone();
    c.delivery.log_stream = names.log.clone();
    c.amqp.reconnect_max_delay_ms = 1_000;
    c.retry.initial_delay_ms = 200;
    c.retry.retries = 3;
    c.delivery.timeout_ms = 3_000;
    c.delivery.connect_timeout_ms = 1_000;
    c.delivery.shutdown_grace_ms = 2_000;
    c.obp.banks = vec!["gh.29.uk".into(), "bank-2".into()];
    c.destinations.allow_http = true;
    c.destinations.allow = vec!["127.0.0.1/32".into()];
    c
}

/// The same configuration as environment variables, for the real binary.
pub fn config_env(c: &Config) -> Vec<(String, String)> {
    vec![
        ("WEBHOOKD_DATA_DIR".into(), c.data_dir.display().to_string()),
        ("WEBHOOKD_HTTP_LISTEN".into(), c.http.listen.clone()),
        ("WEBHOOKD_AMQP_URL".into(), c.amqp.url.clone()),
        ("WEBHOOKD_AMQP_EXCHANGE".into(), c.amqp.exchange.clone()),
        ("WEBHOOKD_AMQP_QUEUE".into(), c.amqp.queue.clone()),
        ("WEBHOOKD_AMQP_DEAD_LETTER_EXCHANGE".into(), c.amqp.dead_letter_exchange.clone()),
        ("WEBHOOKD_AMQP_DEAD_LETTER_QUEUE".into(), c.amqp.dead_letter_queue.clone()),
        ("WEBHOOKD_CATALOG_STREAM".into(), c.catalog.stream.clone()),
        ("WEBHOOKD_DELIVERY_RETRY_QUEUE_PREFIX".into(), c.delivery.retry_queue_prefix.clone()),
        ("WEBHOOKD_DELIVERY_DUE_QUEUE".into(), c.delivery.due_queue.clone()),
        ("WEBHOOKD_DELIVERY_LOG_STREAM".into(), c.delivery.log_stream.clone()),
        ("WEBHOOKD_AMQP_RECONNECT_MAX_DELAY_MS".into(), c.amqp.reconnect_max_delay_ms.to_string()),
        ("WEBHOOKD_RETRY_INITIAL_DELAY_MS".into(), c.retry.initial_delay_ms.to_string()),
        ("WEBHOOKD_RETRY_RETRIES".into(), c.retry.retries.to_string()),
        ("WEBHOOKD_DELIVERY_TIMEOUT_MS".into(), c.delivery.timeout_ms.to_string()),
        ("WEBHOOKD_DELIVERY_CONNECT_TIMEOUT_MS".into(), c.delivery.connect_timeout_ms.to_string()),
        ("WEBHOOKD_OBP_BANKS".into(), c.obp.banks.join(",")),
        ("WEBHOOKD_DESTINATIONS_ALLOW_HTTP".into(), c.destinations.allow_http.to_string()),
        ("WEBHOOKD_DESTINATIONS_ALLOW".into(), c.destinations.allow.join(",")),
    ]
}

/// webhookd running in this process.
pub struct Node {
    pub running: Running,
    pub store: Store,
    pub jwks: serde_json::Value,
    shutdown: CancellationToken,
}

impl Node {
    /// Starts a node and waits until it consumes.
    pub async fn start(config: Config) -> Node {
        let node = Node::launch(config).await;
        node.wait_consuming().await;
        node
    }

    /// Starts a node without waiting for its consumer.
    pub async fn launch(config: Config) -> Node {
        let app = App::open(config).unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let jwks = app.keys().jwks(now, 3600);
        let shutdown = CancellationToken::new();
        let running = app.start(shutdown.clone()).await.unwrap();
        let store = running.store.clone();
        Node { running, store, jwks, shutdown }
    }

    /// Waits until the consumer runs (the topology is declared by then).
    pub async fn wait_consuming(&self) {
        let status = self.running.ingest.clone();
        eventually("the consumer to start", HANG, || {
            status.consuming.load(std::sync::atomic::Ordering::Relaxed)
        })
        .await;
    }

    /// Stops the node gracefully and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.running.wait().await.unwrap();
    }

    /// Puts a subscription through the store's one change function.
    pub async fn put(&self, subscription: Subscription) {
        self.store.apply(Change::Put { subscription }).await.unwrap();
    }

    /// The deliveries of an event.
    pub fn deliveries(&self, event_id: Uuid) -> Vec<Delivery> {
        self.store.deliveries_of_event(&event_id).unwrap()
    }

    /// Waits until the one delivery of `event_id` to `subscription_id` reaches `state`.
    pub async fn wait_state(&self, event_id: Uuid, subscription_id: &str, state: DeliveryState) -> Delivery {
        let store = self.store.clone();
        let sub = subscription_id.to_string();
        let find = move || {
            store
                .deliveries_of_event(&event_id)
                .unwrap()
                .into_iter()
                .find(|d| d.subscription_id == sub && d.state == state)
        };
        let what = format!("delivery of {event_id} to {subscription_id} to be {state:?}");
        let check = find.clone();
        eventually(&what, HANG, move || check().is_some()).await;
        find().unwrap()
    }
}

/// Waits for a condition the product does not signal (store state); tests only.
pub async fn eventually(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes events with publisher confirms.
pub struct Publisher {
    connection: Connection,
    channel: lapin::Channel,
    exchange: String,
}

impl Publisher {
    pub async fn connect(amqp_url: &str, exchange: &str) -> Publisher {
        let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        Publisher { connection, channel, exchange: exchange.to_string() }
    }

    /// Publishes one persistent message and waits for the broker's confirmation.
    pub async fn publish(&self, routing_key: &str, body: &[u8]) {
        self.try_publish(routing_key, body).await.unwrap();
    }

    pub async fn try_publish(&self, routing_key: &str, body: &[u8]) -> lapin::Result<()> {
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2).with_content_type("application/json".into()),
            )
            .await?
            .await?;
        assert!(confirm.is_ack(), "broker did not confirm");
        Ok(())
    }

    /// Publishes an event JSON (routing key = its type).
    pub async fn event(&self, event: &serde_json::Value) {
        let kind = event["type"].as_str().unwrap_or("unknown").to_string();
        self.publish(&kind, event.to_string().as_bytes()).await;
    }

    /// Messages ready in a queue (not counting those handed to a consumer and not yet
    /// acknowledged).
    pub async fn queue_depth(&self, queue: &str) -> u32 {
        let channel = self.connection.create_channel().await.unwrap();
        let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
        let q = channel.queue_declare(queue.into(), passive, FieldTable::default()).await.unwrap();
        q.message_count()
    }

    /// Reads up to `count` messages of a queue (acking them), waiting up to `timeout`.
    pub async fn drain(&self, queue: &str, count: usize, timeout: Duration) -> Vec<lapin::message::Delivery> {
        let channel = self.connection.create_channel().await.unwrap();
        let mut consumer = channel
            .basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .unwrap();
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while out.len() < count {
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(Some(Ok(message))) => {
                    message.ack(BasicAckOptions::default()).await.unwrap();
                    out.push(message);
                }
                _ => break,
            }
        }
        out
    }
}

pub fn balance_event(event_id: Uuid, account: &str, amount: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "balance.changed", "event_id": event_id, "occurred_at": "2026-11-24T10:00:00Z",
        "bank_id": "gh.29.uk", "account_id": account, "amount": amount, "currency": "EUR", "balance": "739.00"
    })
}

pub fn order_event(event_id: Uuid, merchant: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "order.finalized", "event_id": event_id, "occurred_at": "2026-11-24T10:00:00Z",
        "merchant_id": merchant, "order_id": "order-1", "status": "COMPLETED",
        "amount": {"total": 1250, "paid": 1250}, "metadata": "cart 7"
    })
}

pub fn test_event(event_id: Uuid, merchant: &str) -> serde_json::Value {
    serde_json::json!({"type": "test", "event_id": event_id, "occurred_at": "2026-11-24T10:00:00Z", "merchant_id": merchant})
}

pub fn obp(account: &str, trigger: Trigger, url: &str) -> Subscription {
    Subscription::Obp(ObpWebhook {
        account_webhook_id: Uuid::new_v4(),
        bank_id: "gh.29.uk".into(),
        account_id: account.into(),
        trigger,
        url: url.into(),
        http_method: "POST".into(),
        http_protocol: "HTTP/1.1".into(),
        created_by_user_id: "user-1".into(),
        is_active: true,
        created_at_ms: 1,
    })
}

pub fn rabo(merchant: &str, url: &str, types: &[RaboEventType]) -> Subscription {
    Subscription::Rabo(RaboSubscription {
        id: webhookd_core::ids::new_subscription_id(),
        merchant_id: merchant.into(),
        status: RaboStatus::Enabled,
        url: url.into(),
        description: Some("shop hooks".into()),
        event_types: types.to_vec(),
        created_at_ms: 1,
    })
}

/// A free TCP port on loopback (for a child process that must listen on a known address).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until `GET /readyz` on `addr` answers 200.
pub async fn wait_ready(addr: &str) {
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/readyz");
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        if let Ok(r) = client.get(&url).send().await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "{url} never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The node's `GET /metrics` text.
pub async fn scrape(node: &Node) -> String {
    let url = format!("http://{}/metrics", node.running.http_addr);
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

/// Waits until the node's metrics hold every one of `lines` (whole lines), and answers them all. A counter
/// moves just after what it counts becomes visible (a dead letter is counted once confirmed, a
/// pruned delivery once the transaction returns), so a test reads it after waiting for it.
pub async fn wait_metrics(node: &Node, lines: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let metrics = scrape(node).await;
        // Whole lines: a series line is "name{labels} value", and a help text may start alike.
        let has = |line: &&str| metrics.lines().any(|l| l == *line);
        if lines.iter().all(has) {
            return metrics;
        }
        let missing: Vec<_> = lines.iter().filter(|line| !has(line)).collect();
        assert!(tokio::time::Instant::now() < deadline, "{missing:?} not in\n{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTP answer of the API.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: serde_json::Value,
    pub text: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Node {
    /// Mints a token through the node's catalog log (what `webhookd token create` does), applied
    /// here when this returns.
    pub async fn token(&self, user: &str, merchant: Option<&str>, roles: &[&str]) -> String {
        let minted = webhookd_core::auth::mint_token();
        let record = webhookd_store::tokens::TokenRecord {
            id: minted.id.clone(),
            hash: minted.hash,
            user_id: user.into(),
            merchant_id: merchant.map(String::from),
            roles: roles.iter().map(|r| webhookd_core::auth::RoleGrant::parse(r).unwrap()).collect(),
            created_at_ms: 1,
            revoked_at_ms: None,
            note: None,
        };
        let added =
            self.running.catalog.submit(webhookd_core::catalog::Change::AddToken { token: record }).await;
        assert!(matches!(added, Ok(Ok(None))), "{added:?}");
        minted.secret
    }

    /// Revokes a token through the node's catalog log, applied here when this returns.
    pub async fn revoke_token(&self, secret: &str) {
        let id = webhookd_core::auth::token_id_of(secret).unwrap();
        let revoked = self.running.catalog.submit(webhookd_core::catalog::Change::RevokeToken { id }).await;
        assert!(matches!(revoked, Ok(Ok(None))), "{revoked:?}");
    }

    /// Calls the API with a raw body.
    pub async fn call_raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let client = reqwest::Client::new();
        let url = format!("http://{}{path}", self.running.http_addr);
        let mut request = client.request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Answer { status, headers, body, text }
    }

    /// Calls the API with a JSON body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> Answer {
        let body = body.map(|b| b.to_string());
        self.call_raw(method, path, token, body.as_deref(), &[]).await
    }
}

/// Runs the webhookd binary with `args` on `data_dir`, with `env` added.
pub fn webhookd(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_webhookd"))
        .args(args)
        .env("WEBHOOKD_DATA_DIR", data_dir)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// Reads the stream `name` from its first record until one satisfies `last` (bounded by
/// [`HANG`]); answers the records read, as text.
pub async fn read_stream_until(amqp: &str, name: &str, last: impl Fn(&str) -> bool) -> Vec<String> {
    use lapin::types::{AMQPValue, LongString};
    let connection = Connection::connect(amqp, ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.basic_qos(100, Default::default()).await.unwrap();
    let mut from_first = FieldTable::default();
    from_first.insert("x-stream-offset".into(), AMQPValue::LongString(LongString::from("first")));
    let mut consumer = channel
        .basic_consume(name.into(), "test-reader".into(), BasicConsumeOptions::default(), from_first)
        .await
        .unwrap();
    let mut read = Vec::new();
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let next = tokio::time::timeout_at(deadline, consumer.next()).await;
        let message = next.unwrap_or_else(|_| panic!("no record satisfied the test in {name}: {read:?}"));
        let message = message.expect("the stream consumer ended").unwrap();
        message.ack(BasicAckOptions::default()).await.unwrap();
        let text = String::from_utf8_lossy(&message.data).into_owned();
        let done = last(&text);
        read.push(text);
        if done {
            let _ = connection.close(200, "done".into()).await;
            return read;
        }
    }
}
