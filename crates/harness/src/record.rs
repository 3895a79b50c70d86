//! `webhookd record`: taps an AMQP exchange and writes what passes into a capture file.
//!
//! The recorder declares its own server-named, exclusive, auto-delete queue, binds it to the
//! existing exchange with one binding key, and writes every message it gets as one line of
//! the capture format ([`crate::capture`]). The queue goes away with the recorder, so tapping
//! an exchange takes nothing from its other consumers and leaves nothing behind.

use std::path::Path;

use anyhow::{bail, Context as _};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions};
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{FieldTable, ShortString};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::capture::{CaptureWriter, CapturedMessage, CapturedProperties};

/// How many unacknowledged messages the broker may push to the recorder at once.
const PREFETCH: u16 = 256;

/// Records messages from `exchange` matching `binding` into `out` until `count` messages or `shutdown`.
///
/// `out` is created (or truncated) once the queue is bound; each message is written as one
/// complete line before it is acknowledged. `progress` is called with `0` once the queue is
/// bound and the recorder consumes (from then on every matching message published is
/// recorded: wait for it before publishing), then with the running total after each message.
/// Returns how many messages were written: `count` if it was reached, fewer on `shutdown`
/// (also `Ok(0)` when `shutdown` comes before the recorder is ready). Fails when the broker
/// cannot be reached, the exchange does not exist, the output cannot be written, or the
/// broker goes away while recording (the lines written so far stay in `out`).
pub async fn record(
    amqp_url: &str,
    exchange: &str,
    binding: &str,
    out: &Path,
    count: Option<usize>,
    shutdown: CancellationToken,
    progress: impl Fn(usize),
) -> anyhow::Result<usize> {
    let exchange_name = ShortString::try_new(exchange)
        .map_err(|e| anyhow::anyhow!("invalid exchange name {exchange:?}: {e}"))?;
    let binding_key =
        ShortString::try_new(binding).map_err(|e| anyhow::anyhow!("invalid binding key {binding:?}: {e}"))?;
    let properties = ConnectionProperties::default().with_connection_name("webhookd-record".into());
    let connection = tokio::select! {
        _ = shutdown.cancelled() => return Ok(0),
        connection = Connection::connect(amqp_url, properties) => connection
            .with_context(|| format!("connecting to the broker at {}", without_credentials(amqp_url)))?,
    };
    // The set-up takes a few round trips; `shutdown` during it stops the recorder right after.
    let result = tap(&connection, exchange_name, binding_key, out, count, &shutdown, &progress).await;
    // Closing drops the exclusive queue with whatever it still holds.
    let _ = connection.close(200, "webhookd record done".into()).await;
    result
}

/// Declares and binds the queue, then consumes into `out`.
async fn tap(
    connection: &Connection,
    exchange: ShortString,
    binding: ShortString,
    out: &Path,
    count: Option<usize>,
    shutdown: &CancellationToken,
    progress: &impl Fn(usize),
) -> anyhow::Result<usize> {
    // A passive declare fails with NOT_FOUND (closing the channel) when the exchange is missing.
    let probe = connection.create_channel().await.context("opening a channel")?;
    let passive = ExchangeDeclareOptions { passive: true, ..Default::default() };
    match probe.exchange_declare(exchange.clone(), ExchangeKind::Topic, passive, FieldTable::default()).await
    {
        Ok(()) => {
            let _ = probe.close(200, "exchange checked".into()).await;
        }
        Err(e) if is_not_found(&e) => bail!("exchange {exchange} does not exist"),
        Err(e) => return Err(e).with_context(|| format!("checking that exchange {exchange} exists")),
    }

    let channel = connection.create_channel().await.context("opening a channel")?;
    let queue_options = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
    let queue = channel
        .queue_declare("".into(), queue_options, FieldTable::default())
        .await
        .context("declaring the recorder's queue")?;
    let queue_name = queue.name().clone();
    channel
        .queue_bind(
            queue_name.clone(),
            exchange.clone(),
            binding.clone(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("binding the recorder's queue to {exchange} with {binding:?}"))?;
    channel.basic_qos(PREFETCH, BasicQosOptions::default()).await.context("setting the prefetch")?;
    let mut consumer = channel
        .basic_consume(
            queue_name.clone(),
            "webhookd-record".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("starting the consumer")?;
    let mut writer = CaptureWriter::create(out)?;
    tracing::info!(%exchange, %binding, queue = %queue_name, out = %out.display(), "recording");
    progress(0);

    let mut written = 0;
    while count.is_none_or(|count| written < count) {
        let delivery = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            next = consumer.next() => match next {
                Some(delivery) => delivery.context("receiving a message")?,
                None => bail!("the broker cancelled the recorder's consumer"),
            },
        };
        let message = CapturedMessage::from_parts(
            delivery.exchange.as_str(),
            delivery.routing_key.as_str(),
            CapturedProperties::from_amqp(&delivery.properties),
            &delivery.data,
            OffsetDateTime::now_utc(),
        );
        writer.write(&message)?;
        delivery.acker.ack(BasicAckOptions::default()).await.context("acknowledging a message")?;
        written += 1;
        progress(written);
    }
    let _ = channel.close(200, "webhookd record done".into()).await;
    tracing::info!(written, out = %out.display(), "recording stopped");
    Ok(written)
}

/// True when the broker answered NOT_FOUND (404).
fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e)
        if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
}

/// The URL without `user:password@`, for error messages.
fn without_credentials(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions};
    use lapin::types::{AMQPValue, LongString};
    use lapin::{BasicProperties, Channel};
    use tokio::sync::Notify;

    use crate::capture::read_capture;

    /// How long a test waits for the recorder before giving up.
    const PATIENCE: Duration = Duration::from_secs(20);

    /// The broker the tests use: `$WEBHOOKD_TEST_AMQP_URL`, set by scripts/test.sh.
    fn amqp_url() -> String {
        std::env::var("WEBHOOKD_TEST_AMQP_URL").unwrap_or_else(|_| {
            panic!(
                "WEBHOOKD_TEST_AMQP_URL is not set: the recorder tests need a RabbitMQ broker. Run them \
                 through ./scripts/test.sh, or set it, e.g. WEBHOOKD_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f"
            )
        })
    }

    /// A name no other test run uses.
    fn unique(prefix: &str) -> String {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
        format!("{prefix}-{}-{nanos}", std::process::id())
    }

    /// A file path under the system temp dir, removed when dropped.
    struct TempFile(PathBuf);

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// A publisher with confirms on a fresh topic exchange, deleted by [`Publisher::finish`].
    struct Publisher {
        connection: Connection,
        channel: Channel,
        exchange: String,
    }

    impl Publisher {
        async fn new() -> Publisher {
            let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await.unwrap();
            let channel = connection.create_channel().await.unwrap();
            channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
            let exchange = unique("webhookd.test.record");
            channel
                .exchange_declare(
                    exchange.as_str().into(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
            Publisher { connection, channel, exchange }
        }

        async fn publish(&self, routing_key: &str, body: &[u8], properties: BasicProperties) {
            let confirm = self
                .channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    body,
                    properties,
                )
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(confirm.is_ack(), "broker did not confirm");
        }

        async fn finish(self) {
            let _ = self
                .channel
                .exchange_delete(self.exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
            let _ = self.connection.close(200, "test done".into()).await;
        }
    }

    /// Progress reports seen by a test: the latest count, and a wake-up on each report.
    #[derive(Default)]
    struct Progress {
        latest: AtomicUsize,
        reports: AtomicUsize,
        notify: Notify,
    }

    impl Progress {
        fn callback(self: &Arc<Self>) -> impl Fn(usize) + Send + Sync + 'static {
            let me = self.clone();
            move |n| {
                me.latest.store(n, Ordering::SeqCst);
                me.reports.fetch_add(1, Ordering::SeqCst);
                me.notify.notify_one();
            }
        }

        /// Waits until `n` messages are reported (`0`: until the recorder is ready).
        async fn wait_for(&self, n: usize) {
            tokio::time::timeout(PATIENCE, async {
                while self.reports.load(Ordering::SeqCst) == 0 || self.latest.load(Ordering::SeqCst) < n {
                    self.notify.notified().await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("the recorder did not report {n} messages in {PATIENCE:?}"));
        }
    }

    fn nested_headers() -> FieldTable {
        let mut inner = FieldTable::default();
        inner.insert("deep".into(), AMQPValue::LongString("v".into()));
        inner.insert("n".into(), AMQPValue::LongLongInt(1));
        let mut table = FieldTable::default();
        table.insert("x-trace-id".into(), AMQPValue::LongString("4bf92f3577b34da6".into()));
        table.insert("x-attempt".into(), AMQPValue::LongLongInt(3));
        table.insert("x-replayed".into(), AMQPValue::Boolean(false));
        table.insert("x-origin".into(), AMQPValue::FieldTable(inner));
        table.insert(
            "x-tags".into(),
            AMQPValue::FieldArray(
                vec![AMQPValue::LongString(LongString::from("a")), AMQPValue::LongLongInt(-2)].into(),
            ),
        );
        table
    }

    #[tokio::test]
    async fn records_matching_messages_until_the_count() {
        let publisher = Publisher::new().await;
        let out = TempFile(std::env::temp_dir().join(unique("webhookd-record") + ".jsonl"));
        let progress = Arc::new(Progress::default());
        let recorder = {
            let (url, exchange, out, callback) =
                (amqp_url(), publisher.exchange.clone(), out.0.clone(), progress.callback());
            tokio::spawn(async move {
                record(&url, &exchange, "events.#", &out, Some(5), CancellationToken::new(), callback).await
            })
        };
        progress.wait_for(0).await;

        let json =
            BasicProperties::default().with_content_type("application/json".into()).with_delivery_mode(2);
        let sent: Vec<(&str, Vec<u8>, BasicProperties)> = vec![
            ("events.balance.changed", br#"{"type":"balance.changed"}"#.to_vec(), json.clone()),
            (
                "events.binary",
                vec![0xff, 0x00, 0x80, b'x', 0xc3],
                BasicProperties::default().with_delivery_mode(1),
            ),
            ("events.headers", b"with headers".to_vec(), json.clone().with_headers(nested_headers())),
            (
                "events.all.properties",
                "caf\u{e9}".as_bytes().to_vec(),
                json.clone()
                    .with_content_encoding("identity".into())
                    .with_priority(4)
                    .with_message_id("m-4".into())
                    .with_correlation_id("c-4".into())
                    .with_reply_to("replies".into())
                    .with_expiration("600000".into())
                    .with_timestamp(1_795_000_000)
                    .with_type("order.finalized".into())
                    .with_app_id("core-banking".into()),
            ),
            ("events.empty", Vec::new(), BasicProperties::default()),
        ];
        for (i, (key, body, properties)) in sent.iter().enumerate() {
            if i == 2 {
                // Does not match `events.#`: must not be recorded (it would take the 5th place).
                publisher.publish("other.events", b"{}", json.clone()).await;
            }
            publisher.publish(key, body, properties.clone()).await;
        }

        let written =
            tokio::time::timeout(PATIENCE, recorder).await.expect("recorder finishes").unwrap().unwrap();
        assert_eq!(written, 5);
        let captured = read_capture(&out.0).unwrap();
        let text = std::fs::read_to_string(&out.0).unwrap();
        assert_eq!(text.lines().count(), 5, "{text}");
        assert_eq!(captured.len(), 5);
        for (m, (key, body, properties)) in captured.iter().zip(&sent) {
            assert_eq!(m.exchange, publisher.exchange);
            assert_eq!(m.routing_key, *key);
            assert_eq!(m.body_bytes().unwrap(), *body, "{key}");
            let expected = match properties.delivery_mode() {
                Some(_) => properties.clone(),
                None => properties.clone().with_delivery_mode(2),
            };
            assert_eq!(m.to_amqp_properties(), expected, "{key}");
            let age = OffsetDateTime::now_utc() - m.received_at().unwrap();
            assert!(age.whole_seconds() < 60, "{key} received_at {}", m.received_at);
        }
        assert_eq!(captured[1].body, None);
        assert!(captured[1].body_base64.is_some());
        assert_eq!(captured[3].body.as_deref(), Some("caf\u{e9}"));
        let headers = captured[2].properties.headers.as_ref().unwrap();
        assert_eq!(headers["x-origin"]["deep"], "v");
        assert_eq!(headers["x-tags"], serde_json::json!(["a", -2]));
        assert_eq!(captured[4].properties.delivery_mode, None);
        publisher.finish().await;
    }

    #[tokio::test]
    async fn stops_on_shutdown_with_what_it_has() {
        let publisher = Publisher::new().await;
        let out = TempFile(std::env::temp_dir().join(unique("webhookd-record-stop") + ".jsonl"));
        let progress = Arc::new(Progress::default());
        let shutdown = CancellationToken::new();
        let recorder = {
            let (url, exchange, out, callback, shutdown) = (
                amqp_url(),
                publisher.exchange.clone(),
                out.0.clone(),
                progress.callback(),
                shutdown.clone(),
            );
            tokio::spawn(async move { record(&url, &exchange, "#", &out, None, shutdown, callback).await })
        };
        progress.wait_for(0).await;
        for i in 0..3 {
            publisher
                .publish(&format!("k.{i}"), format!("{{\"i\":{i}}}").as_bytes(), BasicProperties::default())
                .await;
        }
        progress.wait_for(3).await;
        shutdown.cancel();
        let written =
            tokio::time::timeout(PATIENCE, recorder).await.expect("recorder stops").unwrap().unwrap();
        assert_eq!(written, 3);
        let keys: Vec<_> = read_capture(&out.0).unwrap().into_iter().map(|m| m.routing_key).collect();
        assert_eq!(keys, ["k.0", "k.1", "k.2"]);
        publisher.finish().await;
    }

    #[tokio::test]
    async fn a_missing_exchange_is_named() {
        let out = TempFile(std::env::temp_dir().join(unique("webhookd-record-missing") + ".jsonl"));
        let exchange = unique("webhookd.test.no-such-exchange");
        let err = record(&amqp_url(), &exchange, "#", &out.0, Some(1), CancellationToken::new(), |_| {})
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), format!("exchange {exchange} does not exist"));
        assert!(!out.0.exists(), "no capture file is created for a missing exchange");
    }

    #[test]
    fn credentials_stay_out_of_messages() {
        assert_eq!(without_credentials("amqp://guest:pw@host:5672/%2f"), "amqp://host:5672/%2f");
        assert_eq!(without_credentials("amqp://host/%2f"), "amqp://host/%2f");
    }
}
