//! Test and replay harness for webhookd: private RabbitMQ brokers and 3-node clusters, scripted
//! HTTP receivers, captures of event streams (`record`), scenarios, and replays with reports.

pub mod broker;
pub mod capture;
pub mod cluster;
pub mod fixtures;
pub mod process;
pub mod receiver;
pub mod record;
pub mod replay;
pub mod report;
pub mod scenario;
pub mod stations;
