//! What one delivery's signature costs: webhookd signs every attempt (an ES256 detached JWS for
//! Rabo, an Ed25519 Standard Webhooks signature for OBP), so this is CPU no worker that keeps
//! the APIs' promises can leave out. Measured on one core with webhookd's own signer over the
//! envelopes the HTTP bound sends, and reported with it (a floor for the per-delivery budget).

use std::time::Instant;

use serde::{Deserialize, Serialize};
use webhookd_core::signing::KeyRing;

use crate::events::{event_body, now_ns, rendered, Kind};

/// CPU per signature, microseconds, on one core.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct SignatureCosts {
    /// One ES256 detached JWS (`x-smartpay-signature`).
    pub es256_us: f64,
    /// One Ed25519 `v1a` signature (`webhook-signature`).
    pub ed25519_us: f64,
}

/// Signs `count` rendered envelopes with each algorithm and returns the time per signature.
pub fn signature_costs(count: u32) -> anyhow::Result<SignatureCosts> {
    let count = count.max(1);
    let body = event_body("bench-signing", Kind::Direct, 0, now_ns());
    let (_, envelope) = rendered(&body, "wsb_bench00000000000000000", "http://127.0.0.1:9/r/0")?;
    let signer = KeyRing::generate(time::OffsetDateTime::now_utc().unix_timestamp()).signer();
    let per_signature_us = |sign: &dyn Fn(u32) -> usize| {
        let started = Instant::now();
        let mut bytes = 0;
        for i in 0..count {
            bytes += sign(i);
        }
        // Used, so the work cannot be optimised away.
        std::hint::black_box(bytes);
        started.elapsed().as_secs_f64() * 1e6 / f64::from(count)
    };
    let es256_us = per_signature_us(&|_| signer.detached_jws(envelope.as_bytes()).len());
    let ed25519_us = per_signature_us(&|i| {
        signer.standard_webhooks_signature("msg_bench", i64::from(i), envelope.as_bytes()).len()
    });
    Ok(SignatureCosts { es256_us, ed25519_us })
}
