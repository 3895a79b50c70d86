//! What deploy/ gives an operator works as written: `deploy/rabbitmq/definitions.json` is what
//! webhookd declares with the Kubernetes ConfigMap's configuration, it imports into a 3-node
//! RabbitMQ cluster, and replicas configured like the sidecars run on the imported topology
//! (their own declarations match it exactly, or the broker would refuse them) and deliver,
//! under a broker user with only the permissions the docs give it.
//! The cluster test needs no WEBHOOKD_TEST_AMQP_URL: it runs its own brokers.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};
use uuid::Uuid;
use webhookd::Config;
use webhookd_core::delivery::DeliveryState;
use webhookd_harness::cluster::Cluster;
use webhookd_harness::receiver::Receiver;

use crate::cluster::blocking;
use crate::support::*;

fn repo_file(path: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

/// The `webhookd.toml` of deploy/kubernetes/configmap.yaml: the block indented under its key.
fn configmap_toml() -> String {
    let yaml = std::fs::read_to_string(repo_file("deploy/kubernetes/configmap.yaml")).unwrap();
    let mut lines = yaml.lines().skip_while(|l| *l != "  webhookd.toml: |").skip(1);
    let mut toml = String::new();
    for line in lines.by_ref() {
        match line.strip_prefix("    ") {
            Some(rest) => toml.push_str(rest),
            None if line.trim().is_empty() => {}
            None => break,
        }
        toml.push('\n');
    }
    assert!(toml.contains("[amqp]"), "no webhookd.toml block in configmap.yaml");
    toml
}

/// The ConfigMap's configuration, with nothing from this process' environment.
fn configmap_config(dir: &std::path::Path) -> Config {
    let file = dir.join("webhookd.toml");
    std::fs::write(&file, configmap_toml()).unwrap();
    Config::load_with_env(Some(&file), Vec::<(String, String)>::new()).unwrap()
}

fn committed_definitions() -> Value {
    let text = std::fs::read_to_string(repo_file("deploy/rabbitmq/definitions.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn the_rabbitmq_definitions_are_what_the_sidecars_declare() {
    let dir = tempfile::tempdir().unwrap();
    let config = configmap_config(dir.path());
    let made = webhookd::broker::definitions_for(&config);
    assert!(
        made == committed_definitions(),
        "deploy/rabbitmq/definitions.json is not what `webhookd broker definitions` makes from the \
         ConfigMap's configuration; regenerate it:\n{}",
        serde_json::to_string_pretty(&made).unwrap()
    );
    // Everything replicated: no classic queue survives the loss of its node.
    for queue in made["queues"].as_array().unwrap() {
        let kind = queue["arguments"]["x-queue-type"].as_str();
        assert!(matches!(kind, Some("quorum" | "stream")), "{queue}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_definitions_import_into_a_cluster_and_sidecars_run_on_them() {
    let dir = tempfile::tempdir().unwrap().keep();
    let cluster = Arc::new(blocking(move || Cluster::start(&dir)).await.unwrap());
    let file = repo_file("deploy/rabbitmq/definitions.json");
    let imported = blocking({
        let cluster = cluster.clone();
        move || cluster.ctl(1, &["import_definitions", file.to_str().unwrap()])
    })
    .await;
    imported.unwrap();
    // webhookd's user, with the permissions docs/operations-deploy.md gives it.
    blocking({
        let cluster = cluster.clone();
        move || {
            cluster.ctl(1, &["add_user", "webhookd", "sidecar-secret"])?;
            let (configure, write, read) = (r"^webhookd\.", r"^(webhookd\..*|amq\.default)$", r"^webhookd\.");
            cluster.ctl(1, &["set_permissions", "-p", "/", "webhookd", configure, write, read])
        }
    })
    .await
    .unwrap();

    // Every queue of the file, of its type, under the placement policy.
    let listed = blocking({
        let cluster = cluster.clone();
        move || cluster.ctl(2, &["-q", "list_queues", "name", "type", "policy", "--no-table-headers"])
    })
    .await
    .unwrap();
    let definitions = committed_definitions();
    for queue in definitions["queues"].as_array().unwrap() {
        let name = queue["name"].as_str().unwrap();
        let kind = queue["arguments"]["x-queue-type"].as_str().unwrap();
        let row = listed.lines().find(|l| l.split_whitespace().next() == Some(name));
        let fields: Vec<&str> = row.map(|r| r.split_whitespace().collect()).unwrap_or_default();
        assert_eq!(fields, [name, kind, webhookd::broker::PLACEMENT_POLICY], "{listed}");
    }

    // Two sidecars configured by the ConfigMap (their own data dirs and ports, each on its own
    // node, a loopback receiver allowed): they declare the same topology and deliver.
    let receiver = Receiver::start().await.unwrap();
    let mut exchange = String::new();
    let mut dirs = Vec::new();
    let mut nodes = Vec::new();
    for i in 0..2 {
        let data = tempfile::tempdir().unwrap();
        let mut c = configmap_config(data.path());
        c.data_dir = data.path().join("data");
        c.http.listen = "127.0.0.1:0".into();
        c.amqp.url = cluster.url(i + 1).replacen("guest:guest@", "webhookd:sidecar-secret@", 1);
        assert!(c.amqp.url.contains("webhookd:sidecar-secret@"), "{}", c.amqp.url);
        c.destinations.allow_http = true;
        c.destinations.allow = vec!["127.0.0.1/32".into()];
        exchange = c.amqp.exchange.clone();
        let node = Node::start(c).await;
        wait_ready(&node.running.http_addr.to_string()).await;
        nodes.push(node);
        dirs.push(data);
    }
    let token = nodes[0].token("u-m-1", Some("m-1"), &[]).await;
    let target = nodes[0].running.catalog.applied_offset();
    eventually("the second sidecar to apply the token", HANG, || {
        nodes[1].running.catalog.applied_offset() >= target
    })
    .await;
    let body =
        json!({"status": "enabled", "url": receiver.url("/orders"), "eventTypes": ["order.finalized/v1"]});
    let created = nodes[1].call("POST", "/v3/webhooks/subscriptions", Some(&token), Some(body)).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.body["id"].as_str().unwrap().to_string();

    let publisher = Publisher::connect(cluster.url(3), &exchange).await;
    let events: Vec<Uuid> = (0..10).map(|_| Uuid::new_v4()).collect();
    for event in &events {
        publisher.event(&order_event(*event, "m-1")).await;
    }
    receiver.wait_for(Some("/orders"), events.len(), HANG).await.unwrap();
    for node in &nodes {
        for event in &events {
            node.wait_state(*event, &id, DeliveryState::Delivered).await;
        }
    }
    for node in nodes {
        node.stop().await;
    }
    blocking(move || cluster.stop()).await.unwrap();
}
