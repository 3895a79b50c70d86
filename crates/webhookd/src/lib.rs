//! webhookd: wires the store, the AMQP ingestion, the delivery engine and the HTTP API into
//! one process with one shutdown.
//!
//! # Layout
//! - [`broker`]: `webhookd broker definitions`: what webhookd declares, as a file to import.
//! - [`config`]: layered configuration (embedded defaults, file, environment).
//! - [`keys`]: signing keys on disk.
//! - [`reload`]: signing keys and the TLS certificate reloaded while running (files, SIGHUP).
//! - [`deliveries_cli`]: `webhookd deliveries ...` over the admin API.
//! - [`token_cli`]: `webhookd token ...` through the catalog log.
//! - [`publish_cli`]: `webhookd publish`: one event, as the core banking system publishes it.
//! - [`app`]: opening, running and stopping the parts.
//! - [`maintenance`]: retention and auto-disable on a timer.
//! - [`telemetry`]: logging as text or JSON.

pub mod app;
pub mod broker;
pub mod config;
pub mod degraded;
pub mod deliveries_cli;
pub mod keys;
pub mod maintenance;
pub mod publish_cli;
pub mod reload;
pub mod telemetry;
pub mod token_cli;

pub use app::{App, Running};
pub use config::Config;
