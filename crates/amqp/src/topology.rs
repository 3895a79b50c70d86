//! What webhookd declares on a broker, as data. Each part describes its exchanges, queues and
//! bindings as a [`Topology`] and declares them from it; `webhookd broker definitions` prints
//! the union as a RabbitMQ definitions file. So what an operator imports is exactly what
//! webhookd declares, and webhookd's own declarations then match it (RabbitMQ refuses a
//! declaration whose arguments differ from the existing queue's).

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};
use serde_json::{json, Map, Value};

/// The value of a queue argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arg {
    /// A string (`x-queue-type`, `x-dead-letter-exchange`, ...).
    Text(String),
    /// A number (`x-message-ttl`, `x-max-length-bytes`, ...).
    Number(i64),
}

/// A durable queue with its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queue {
    /// Its name.
    pub name: String,
    /// Its arguments, in declaration order.
    pub arguments: Vec<(&'static str, Arg)>,
}

impl Queue {
    /// A durable queue of `queue_type` (`classic`: no `x-queue-type`, the broker's default).
    pub fn new(name: &str, queue_type: &str) -> Queue {
        let mut queue = Queue { name: name.to_string(), arguments: Vec::new() };
        if queue_type != "classic" {
            queue = queue.text("x-queue-type", queue_type);
        }
        queue
    }

    /// With a string argument.
    pub fn text(mut self, key: &'static str, value: &str) -> Queue {
        self.arguments.push((key, Arg::Text(value.to_string())));
        self
    }

    /// With a numeric argument.
    pub fn number(mut self, key: &'static str, value: u64) -> Queue {
        self.arguments.push((key, Arg::Number(value.min(i64::MAX as u64) as i64)));
        self
    }

    /// Its arguments as AMQP declares them.
    pub fn field_table(&self) -> FieldTable {
        let mut table = FieldTable::default();
        for (key, value) in &self.arguments {
            let value = match value {
                Arg::Text(text) => AMQPValue::LongString(LongString::from(text.as_str())),
                Arg::Number(n) => AMQPValue::LongLongInt(*n),
            };
            table.insert((*key).into(), value);
        }
        table
    }
}

/// A durable topic exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    /// Its name.
    pub name: String,
}

/// `queue` bound to `exchange` with `routing_key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The exchange.
    pub exchange: String,
    /// The queue.
    pub queue: String,
    /// The routing key (a topic pattern).
    pub routing_key: String,
}

/// What one part declares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    /// Its exchanges (durable, topic).
    pub exchanges: Vec<Exchange>,
    /// Its queues (durable).
    pub queues: Vec<Queue>,
    /// Its bindings.
    pub bindings: Vec<Binding>,
}

impl Topology {
    /// With `queue`.
    pub fn queue(mut self, queue: Queue) -> Topology {
        self.queues.push(queue);
        self
    }

    /// Adds what `other` declares.
    pub fn extend(&mut self, other: Topology) {
        self.exchanges.extend(other.exchanges);
        self.queues.extend(other.queues);
        self.bindings.extend(other.bindings);
    }

    /// Declares it on `channel`: exchanges, then queues, then bindings (idempotent; a queue
    /// that exists with other arguments fails the declaration, and the channel with it).
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable_exchange = ExchangeDeclareOptions { durable: true, ..Default::default() };
        let durable_queue = QueueDeclareOptions { durable: true, ..Default::default() };
        for exchange in &self.exchanges {
            channel
                .exchange_declare(
                    exchange.name.as_str().into(),
                    ExchangeKind::Topic,
                    durable_exchange,
                    FieldTable::default(),
                )
                .await?;
        }
        for queue in &self.queues {
            channel.queue_declare(queue.name.as_str().into(), durable_queue, queue.field_table()).await?;
        }
        for binding in &self.bindings {
            channel
                .queue_bind(
                    binding.queue.as_str().into(),
                    binding.exchange.as_str().into(),
                    binding.routing_key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }
}

/// The virtual host an AMQP url names (`/` when it names none or does not parse: the url's own
/// errors are reported where it is connected to).
pub fn vhost_of(amqp_url: &str) -> String {
    amqp_url.parse::<lapin::uri::AMQPUri>().map(|u| u.vhost).unwrap_or_else(|_| "/".into())
}

/// A RabbitMQ definitions file (`rabbitmqctl import_definitions`) of `parts`, each in its
/// virtual host, with `policies` (already in the file's form). What two parts both declare is
/// listed once.
pub fn definitions(parts: &[(String, Topology)], policies: Vec<Value>) -> Value {
    let (mut vhosts, mut exchanges, mut queues, mut bindings) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let push = |list: &mut Vec<Value>, item: Value| {
        if !list.contains(&item) {
            list.push(item);
        }
    };
    for (vhost, part) in parts {
        let vhost = vhost.as_str();
        push(&mut vhosts, json!({ "name": vhost }));
        for e in &part.exchanges {
            let exchange = json!({
                "name": e.name, "vhost": vhost, "type": "topic", "durable": true,
                "auto_delete": false, "internal": false, "arguments": {}
            });
            push(&mut exchanges, exchange);
        }
        for q in &part.queues {
            let arguments: Map<String, Value> = q
                .arguments
                .iter()
                .map(|(key, value)| {
                    let value = match value {
                        Arg::Text(text) => json!(text),
                        Arg::Number(n) => json!(n),
                    };
                    (key.to_string(), value)
                })
                .collect();
            let queue = json!({ "name": q.name, "vhost": vhost, "durable": true, "auto_delete": false, "arguments": arguments });
            push(&mut queues, queue);
        }
        for b in &part.bindings {
            let binding = json!({
                "source": b.exchange, "vhost": vhost, "destination": b.queue, "destination_type": "queue",
                "routing_key": b.routing_key, "arguments": {}
            });
            push(&mut bindings, binding);
        }
    }
    json!({ "vhosts": vhosts, "exchanges": exchanges, "queues": queues, "bindings": bindings, "policies": policies })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_declares_what_its_definition_lists() {
        let queue =
            Queue::new("q", "quorum").number("x-message-ttl", 2_000).text("x-overflow", "reject-publish");
        let table = queue.field_table();
        let inner = table.inner();
        assert_eq!(inner.get("x-queue-type"), Some(&AMQPValue::LongString("quorum".into())));
        assert_eq!(inner.get("x-message-ttl"), Some(&AMQPValue::LongLongInt(2_000)));
        let part = ("/".to_string(), Topology::default().queue(queue));
        let file = definitions(&[part.clone(), part], Vec::new());
        let queues = file["queues"].as_array().unwrap();
        assert_eq!(queues.len(), 1, "declared twice, listed once");
        assert_eq!(
            queues[0]["arguments"],
            json!({ "x-queue-type": "quorum", "x-message-ttl": 2000, "x-overflow": "reject-publish" })
        );
        assert!(Queue::new("c", "classic").arguments.is_empty(), "classic is the broker's default");
    }

    #[test]
    fn the_vhost_comes_from_the_url() {
        assert_eq!(vhost_of("amqp://u:p@h:5672/%2f"), "/");
        assert_eq!(vhost_of("amqp://u:p@h:5672/bank"), "bank");
        assert_eq!(vhost_of("amqp://h"), "/");
    }
}
