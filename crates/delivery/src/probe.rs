//! One attempt sent now, outside the schedule: Rabo's `verify`.

use std::sync::Arc;

use webhookd_core::clock::Clock;
use webhookd_core::delivery::Delivery;
use webhookd_core::outcome::{classify, Answer, Verdict};
use webhookd_core::signing::SharedKeys;

use crate::http::{Clients, Response};

/// Sends single deliveries immediately, signed and judged like scheduled ones.
#[derive(Clone)]
pub struct Prober {
    clients: Clients,
    keys: SharedKeys,
    clock: Clock,
}

impl Prober {
    /// A prober over the engine's clients.
    pub fn new(clients: Clients, keys: SharedKeys, clock: Clock) -> Arc<Prober> {
        Arc::new(Prober { clients, keys, clock })
    }

    /// Sends `delivery` once and classifies the answer by its API's rules.
    pub async fn probe(&self, delivery: &Delivery) -> (Verdict, Response) {
        let response = self.clients.send(delivery, &self.keys.signer(), &self.clock).await;
        let answer = match response.status {
            Some(code) => Answer::Status { code, body: &response.body },
            None => Answer::NoAnswer,
        };
        (classify(delivery.api, answer), response)
    }
}
