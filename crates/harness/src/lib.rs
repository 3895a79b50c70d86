//! Test and replay harness for webhookd: private RabbitMQ brokers and scripted HTTP receivers.

pub mod broker;
pub mod receiver;
