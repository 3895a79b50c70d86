//! `webhookd broker definitions`: everything webhookd declares on its brokers with a given
//! configuration, as one RabbitMQ definitions file for an operator to import (queues, retry
//! tiers, streams with their retention, exchanges, bindings, a placement policy). It is built
//! from the same descriptions the parts declare from, so the two cannot drift apart.

use serde_json::{json, Value};
use webhookd_amqp::topology::{definitions, vhost_of, Topology};
use webhookd_core::clock::Clock;

use crate::config::Config;

/// The policy that spreads the leaders of webhookd's queues and streams over a cluster's nodes
/// (harmless on one node).
pub const PLACEMENT_POLICY: &str = "webhookd-leader-placement";

/// The definitions file for `config`.
pub fn definitions_for(config: &Config) -> Value {
    let clock = Clock::scaled(config.delivery.time_scale);
    let parts = vec![
        (vhost_of(&config.amqp.url), webhookd_ingest::topology::topology(&config.amqp)),
        (vhost_of(&config.amqp.url), webhookd_delivery::topology(&config.delivery, &config.retry, &clock)),
        (vhost_of(&config.catalog_url()), webhookd_catalog::stream::topology(&config.catalog)),
    ];
    let policies = placement_policies(&parts);
    definitions(&parts, policies)
}

/// One placement policy per virtual host, matching exactly the queues declared there.
fn placement_policies(parts: &[(String, Topology)]) -> Vec<Value> {
    let mut vhosts: Vec<&str> = parts.iter().map(|(vhost, _)| vhost.as_str()).collect();
    vhosts.dedup();
    vhosts
        .into_iter()
        .map(|vhost| {
            let mut names: Vec<String> = parts
                .iter()
                .filter(|(v, _)| v == vhost)
                .flat_map(|(_, part)| part.queues.iter().map(|q| escape(&q.name)))
                .collect();
            names.dedup();
            json!({
                "name": PLACEMENT_POLICY,
                "vhost": vhost,
                "pattern": format!("^({})$", names.join("|")),
                "apply-to": "queues",
                "priority": 0,
                "definition": { "queue-leader-locator": "balanced" }
            })
        })
        .collect()
}

/// `name` as a literal in a policy's regular expression.
fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if !c.is_ascii_alphanumeric() && c != '_' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Config {
        Config::load_with_env(None, Vec::new()).unwrap()
    }

    fn queue_names(file: &Value) -> Vec<&str> {
        file["queues"].as_array().unwrap().iter().map(|q| q["name"].as_str().unwrap()).collect()
    }

    #[test]
    fn the_definitions_hold_every_queue_webhookd_declares() {
        let config = defaults();
        let file = definitions_for(&config);
        let names = queue_names(&file);
        let tiers =
            webhookd_delivery::TierQueues::new(&config.delivery, &config.retry, &Clock::default()).tiers();
        assert!(tiers.len() > 5, "{tiers:?}");
        for expected in [
            config.amqp.queue.as_str(),
            &config.amqp.dead_letter_queue,
            &config.delivery.due_queue,
            &config.delivery.log_stream,
            &config.catalog.stream,
        ]
        .into_iter()
        .chain(tiers.iter().map(|(_, name)| name.as_str()))
        {
            assert!(names.contains(&expected), "{expected} missing from {names:?}");
        }
        let policy = &file["policies"][0];
        assert_eq!(policy["vhost"], "/");
        let pattern = policy["pattern"].as_str().unwrap();
        assert!(pattern.contains(r"webhookd\.due|"), "{pattern}");
        assert_eq!(file["vhosts"], json!([{ "name": "/" }]));
    }

    #[test]
    fn each_part_lands_in_its_brokers_vhost() {
        let mut config = defaults();
        config.catalog.url = "amqp://guest:guest@127.0.0.1:5672/catalog".into();
        let file = definitions_for(&config);
        let catalog = file["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == config.catalog.stream.as_str())
            .unwrap();
        assert_eq!(catalog["vhost"], "catalog");
        assert_eq!(catalog["arguments"]["x-queue-type"], "stream");
        assert_eq!(file["policies"].as_array().unwrap().len(), 2, "one per vhost");
    }

    #[test]
    fn names_are_literals_in_the_policy_pattern() {
        assert_eq!(escape("webhookd.retry.2000ms"), r"webhookd\.retry\.2000ms");
        assert_eq!(escape("a_b-c"), r"a_b\-c");
    }
}
