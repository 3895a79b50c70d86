//! End-to-end tests of webhookd: a real RabbitMQ broker (started by scripts/test.sh, or by the
//! harness for tests that restart it), real HTTP receivers on loopback, the real sled store.
//!
//! Every test uses its own exchange, queues and data dir, so they run in parallel on one broker.

mod support;

mod admin;
mod auth_matrix;
mod bench;
mod chaos;
mod cli;
mod cluster;
mod cluster_replicas;
mod connection_cuts;
mod contract;
mod crash;
mod deploy;
mod dispatch;
mod doc_examples;
mod egress_proxy;
mod faults;
mod hostile_api;
mod hostile_receivers;
mod maintenance;
mod obp_api;
mod openapi;
mod pipeline;
mod poison;
mod rabo_api;
mod reliability;
mod reloads;
mod replay;
mod replicas;
mod shared_keys;
mod ssrf;
mod ssrf_forms;
mod tiers;
mod verify_snippets;
