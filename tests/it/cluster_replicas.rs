//! Three webhookd replicas, each on its own node of a private 3-node RabbitMQ cluster
//! (`webhookd_harness::cluster`): the catalog log outlives the loss of its stream's leader and a
//! frozen node. Needs no WEBHOOKD_TEST_AMQP_URL: it runs its own brokers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use webhookd_harness::cluster::{Cluster, NodeState, TICK_TIME};

use crate::cluster::{blocking, wait_status};
use crate::support::*;

const SUBS: &str = "/v3/webhooks/subscriptions";

/// A started cluster and one replica per node (replica `i` on node `i + 1`); replica 0 starts
/// first, so the catalog stream is declared through node 1 (its leader there).
async fn cluster_and_replicas(tag: &str) -> (Arc<Cluster>, Names, Vec<tempfile::TempDir>, Vec<Node>) {
    let dir = tempfile::tempdir().unwrap().keep();
    let cluster = Arc::new(blocking(move || Cluster::start(&dir)).await.unwrap());
    let names = Names::new(tag);
    let mut dirs = Vec::new();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let data = tempfile::tempdir().unwrap();
        let mut c = config(&names, cluster.url(i + 1), data.path());
        c.amqp.queue_type = "quorum".into();
        c.catalog.write_timeout_ms = 3_000;
        let node = Node::start(c).await;
        wait_ready(&node.running.http_addr.to_string()).await;
        nodes.push(node);
        dirs.push(data);
    }
    (cluster, names, dirs, nodes)
}

/// Waits until every replica has applied what any of them has.
async fn caught_up(nodes: &[Node]) {
    let target = nodes.iter().filter_map(|n| n.running.catalog.applied_offset()).max();
    let offsets = || nodes.iter().map(|n| n.running.catalog.applied_offset()).collect::<Vec<_>>();
    eventually("every replica to apply the catalog log", HANG, || offsets().iter().all(|o| *o >= target))
        .await;
}

fn digests(nodes: &[Node]) -> Vec<String> {
    nodes.iter().map(|n| n.store.catalog_digest().unwrap()).collect()
}

/// Creates a subscription with `key`, sending it again (same key) after a 503 until it is
/// answered 201: a change that may have landed is never made twice.
async fn create_surely(node: &Node, token: &str, key: &str, url: &str) -> (String, usize) {
    let body = json!({"status": "enabled", "url": url, "eventTypes": ["test/v1"]}).to_string();
    let deadline = tokio::time::Instant::now() + HANG;
    let mut unavailable = 0;
    loop {
        let a = node.call_raw("POST", SUBS, Some(token), Some(&body), &[("idempotency-key", key)]).await;
        match a.status {
            201 => return (a.body["id"].as_str().unwrap().to_string(), unavailable),
            503 | 409 => unavailable += 1,
            other => panic!("{key}: {other} {}", a.text),
        }
        assert!(tokio::time::Instant::now() < deadline, "{key} never created");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_leaders_node_killed_mid_stream_writes_resume_and_nothing_is_applied_twice() {
    let (cluster, names, _dirs, nodes) = cluster_and_replicas("clkill").await;
    let tokens =
        [nodes[0].token("u-a", Some("m-a"), &[]).await, nodes[0].token("u-b", Some("m-b"), &[]).await];
    caught_up(&nodes).await;
    let receiver = webhookd_harness::receiver::Receiver::start().await.unwrap();
    let url = receiver.url("/x");
    const EACH: usize = 25;
    let created = Arc::new(AtomicUsize::new(0));
    let stream = names.catalog.clone();
    let c = cluster.clone();
    let leader = blocking(move || c.leader_of(&stream, 2)).await.unwrap();
    // The replicas on the other two nodes create, each for its merchant, while the stream
    // leader's node is killed.
    let others: Vec<usize> = (0..3).filter(|i| i + 1 != leader).collect();
    let writers = others.iter().enumerate().map(|(w, &i)| {
        let (node, token, created, url) = (&nodes[i], tokens[w].clone(), created.clone(), url.clone());
        async move {
            let mut unavailable = 0;
            let mut ids = Vec::new();
            for k in 0..EACH {
                let (id, refused) = create_surely(node, &token, &format!("w{w}-{k}"), &url).await;
                ids.push(id);
                unavailable += refused;
                created.fetch_add(1, Ordering::SeqCst);
            }
            (ids, unavailable)
        }
    });
    let killer = async {
        eventually("the first creates", HANG, || created.load(Ordering::SeqCst) >= 6).await;
        let c = cluster.clone();
        blocking(move || c.kill(leader)).await.unwrap();
    };
    let (written, ()) = tokio::join!(futures_util::future::join_all(writers), killer);
    // A new leader took over.
    let (c, stream) = (cluster.clone(), names.catalog.clone());
    let new_leader = blocking(move || c.leader_of(&stream, others[0] + 1)).await.unwrap();
    assert_ne!(new_leader, leader);
    // The node back: its replica reconnects and catches up.
    let c = cluster.clone();
    blocking(move || c.restart(leader)).await.unwrap();
    caught_up(&nodes).await;
    for (w, (ids, _)) in written.iter().enumerate() {
        let merchant = ["m-a", "m-b"][w];
        assert_eq!(ids.len(), EACH);
        for node in &nodes {
            let held = node.store.subscriptions_of_merchant(merchant).unwrap();
            assert_eq!(held.len(), EACH, "{merchant}: a retried create was applied twice, or one was lost");
            let mut want = ids.clone();
            want.sort();
            let mut have: Vec<String> = held.iter().map(|s| s.id()).collect();
            have.sort();
            assert_eq!(have, want);
        }
    }
    let d = digests(&nodes);
    assert!(d.iter().all(|x| *x == d[0]), "{d:?}");
    let refused: usize = written.iter().map(|(_, r)| r).sum();
    eprintln!(
        "leader kill: node {leader} (then node {new_leader}); {} creates, {refused} answers 503/409 on the way",
        2 * EACH
    );
    for node in nodes {
        node.stop().await;
    }
    blocking(move || cluster.stop()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_nodes_replica_answers_503_the_others_carry_on_and_all_agree_after_the_thaw() {
    let (cluster, _names, _dirs, nodes) = cluster_and_replicas("clfreeze").await;
    let token = nodes[0].token("u-m", Some("m-1"), &[]).await;
    caught_up(&nodes).await;
    let receiver = webhookd_harness::receiver::Receiver::start().await.unwrap();
    let url = receiver.url("/x");
    let c = cluster.clone();
    blocking(move || c.freeze(3)).await.unwrap();
    let node3 = cluster.node_name(3);
    wait_status(&cluster, "nodes 1 and 2 to count node 3 as down", HANG + TICK_TIME * 4, |s| {
        s.nodes[2].state == NodeState::Frozen
            && s.nodes[..2].iter().all(|n| {
                n.state == NodeState::Running
                    && n.running_nodes.contains(&n.name)
                    && !n.running_nodes.contains(&node3)
            })
    })
    .await;
    // The minority replica cannot get its change confirmed: 503, in the route's format.
    let body = json!({"status": "enabled", "url": url, "eventTypes": ["test/v1"]});
    let a = nodes[2].call("POST", SUBS, Some(&token), Some(body.clone())).await;
    assert_eq!(a.status, 503, "{}", a.text);
    assert_eq!(a.header("content-type"), Some("application/problem+json"));
    // Reads there go on; the majority's replicas carry on.
    assert_eq!(nodes[2].call("GET", SUBS, Some(&token), None).await.status, 200);
    for k in 0..6 {
        let (_, _) = create_surely(&nodes[k % 2], &token, &format!("maj-{k}"), &url).await;
    }
    let c = cluster.clone();
    blocking(move || c.thaw(3)).await.unwrap();
    let c = cluster.clone();
    blocking(move || c.heal()).await.unwrap();
    caught_up(&nodes).await;
    let d = digests(&nodes);
    assert!(d.iter().all(|x| *x == d[0]), "{d:?}");
    // The six, and the refused one only if it landed after all (a 503 may still land).
    let held = nodes[0].store.subscriptions_of_merchant("m-1").unwrap().len();
    assert!(held == 6 || held == 7, "{held}");
    for node in nodes {
        node.stop().await;
    }
    blocking(move || cluster.stop()).await.unwrap();
}
