//! Property tests (proptest) of the retry schedule, the clock's time scale and the signatures.
//!
//! Case counts are kept small (p256 is slow in debug builds) so that the file adds seconds, not
//! minutes, to CI; `PROPTEST_CASES=N` raises them for a deeper run (docs/fuzzing.md).

use std::time::Duration;

use proptest::prelude::*;
use webhookd_core::clock::Clock;
use webhookd_core::retry::RetryPolicy;
use webhookd_core::signing::{verify, KeyRing, SigningError};

/// The number of cases: `default`, or `PROPTEST_CASES` when set (for a deeper run; an explicit
/// `with_cases` would otherwise ignore it).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A policy that passes `RetryPolicy::validate`: the domain the schedule is specified on.
fn valid_policy() -> impl Strategy<Value = RetryPolicy> {
    (
        1u64..=u64::MAX,
        prop_oneof![Just(1.0), Just(2.0), 1.0f64..4.0, 1.0f64..1e12, Just(f64::MAX)],
        any::<u64>(),
        prop_oneof![0u32..=40, Just(u32::MAX), any::<u32>()],
        prop_oneof![Just(0.0), 0.0f64..1.0],
        any::<u64>(),
    )
        .prop_map(|(initial, factor, max, retries, jitter, retry_after_max)| RetryPolicy {
            initial_delay_ms: initial,
            factor,
            max_delay_ms: max.max(initial),
            retries,
            jitter,
            retry_after_max_ms: retry_after_max,
        })
        .prop_filter("valid", |p| p.validate().is_ok())
}

/// Any policy at all, including ones `validate` refuses: the schedule must still not panic.
fn any_policy() -> impl Strategy<Value = RetryPolicy> {
    (any::<u64>(), any::<f64>(), any::<u64>(), any::<u32>(), any::<f64>(), any::<u64>()).prop_map(
        |(initial, factor, max, retries, jitter, retry_after_max)| RetryPolicy {
            initial_delay_ms: initial,
            factor,
            max_delay_ms: max,
            retries,
            jitter,
            retry_after_max_ms: retry_after_max,
        },
    )
}

/// An attempt number: small ones, the boundaries, and the far end of u32.
fn attempt() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..=64, Just(u32::MAX), Just(1 << 31), (1u32 << 31) - 2..=(1u32 << 31) + 2, any::<u32>()]
}

fn sample() -> impl Strategy<Value = f64> {
    prop_oneof![0.0f64..1.0, Just(0.0), Just(0.999_999), any::<f64>()]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(256)))]

    /// With one jitter sample, each retry waits at least as long as the one before, up to the cap.
    #[test]
    fn delays_never_decrease(p in valid_policy(), n in attempt(), s in 0.0f64..1.0) {
        if let (Some(a), Some(b)) = (p.delay_before_retry(n, s), p.delay_before_retry(n.saturating_add(1), s)) {
            prop_assert!(a <= b, "retry {n}: {a:?} then {b:?}");
        }
    }

    /// Without jitter the delays follow initial * factor^(n-1), capped: monotonic along a whole
    /// schedule, and equal to the cap once reached.
    #[test]
    fn schedule_grows_to_the_cap(mut p in valid_policy()) {
        p.jitter = 0.0;
        let last = p.retries.min(80);
        let mut previous = Duration::ZERO;
        for n in 1..=last {
            let d = p.delay_before_retry(n, 0.5).expect("inside the schedule");
            prop_assert!(d >= previous, "retry {n}: {d:?} after {previous:?}");
            prop_assert!(d <= Duration::from_millis(p.max_delay_ms));
            if previous == Duration::from_millis(p.max_delay_ms) {
                prop_assert_eq!(d, previous, "the cap holds once reached");
            }
            previous = d;
        }
    }

    /// No delay ever exceeds `max_delay_ms`, whatever the attempt number or jitter sample.
    #[test]
    fn delays_never_exceed_the_cap(p in valid_policy(), n in attempt(), s in sample()) {
        if let Some(d) = p.delay_before_retry(n, s) {
            prop_assert!(d <= Duration::from_millis(p.max_delay_ms), "{d:?} > {} ms", p.max_delay_ms);
            // Jitter spreads around the capped delay by at most its fraction (rounding aside).
            let center = p.delay_before_retry(n, 0.5).map(|c| c.as_millis() as f64).unwrap_or(0.0);
            // Float rounding of very long delays aside.
            let spread = center * (p.jitter + 1e-9) + 1.0;
            prop_assert!((d.as_millis() as f64 - center).abs() <= spread, "{d:?} vs {center}");
        }
    }

    /// A delivery gets exactly `retries + 1` attempts: the first, then one per scheduled retry.
    #[test]
    fn attempts_are_retries_plus_one(mut p in valid_policy(), retries in 0u32..=64, s in sample()) {
        p.retries = retries;
        // As the delivery engine does: after `attempts` failures, wait or give up.
        let mut attempts = 1u32;
        while p.next_delay(&p.schedule(), attempts, None, s).is_some() {
            attempts += 1;
            prop_assert!(attempts <= retries + 1);
        }
        prop_assert_eq!(attempts, retries + 1);
        prop_assert_eq!(p.next_delay(&p.schedule(), 0, None, s), None);
    }

    /// The end of any schedule, even the longest, is exact.
    #[test]
    fn the_schedule_ends_after_the_last_retry(p in valid_policy(), s in sample()) {
        prop_assert_eq!(p.delay_before_retry(p.retries, s).is_some(), p.retries > 0);
        if let Some(after) = p.retries.checked_add(1) {
            prop_assert_eq!(p.delay_before_retry(after, s), None);
        }
        prop_assert_eq!(p.delay_before_retry(0, s), None);
    }

    /// `Retry-After` lengthens the wait up to `retry_after_max_ms` and never shortens it.
    #[test]
    fn retry_after_is_honoured_within_bounds(
        p in valid_policy(),
        n in attempt(),
        s in sample(),
        asked_ms in prop_oneof![0u64..10_000_000, any::<u64>()],
        asked_sub in 0u32..1_000_000_000,
    ) {
        let asked = Duration::new(asked_ms / 1000, asked_sub);
        let scheduled = p.delay_before_retry(n, s);
        let next = p.next_delay(&p.schedule(), n, Some(asked), s);
        prop_assert_eq!(next.is_some(), scheduled.is_some());
        if let (Some(next), Some(scheduled)) = (next, scheduled) {
            let cap = Duration::from_millis(p.retry_after_max_ms);
            prop_assert!(next >= scheduled);
            prop_assert!(next >= asked.min(cap));
            prop_assert!(next <= scheduled.max(cap));
            prop_assert_eq!(next, scheduled.max(asked.min(cap)));
        }
        prop_assert_eq!(p.next_delay(&p.schedule(), n, None, s), scheduled);
    }

    /// Any policy (even one `validate` refuses) and any attempt number: no panic, no overflow.
    #[test]
    fn any_input_is_total(p in any_policy(), n in attempt(), s in any::<f64>(), asked in any::<u64>()) {
        let _ = p.validate();
        if let Some(d) = p.delay_before_retry(n, s) {
            prop_assert!(d <= Duration::from_millis(p.max_delay_ms));
        }
        let _ = p.next_delay(&p.schedule(), n, Some(Duration::from_millis(asked)), s);
        let _ = p.next_delay(&p.schedule(), n, Some(Duration::MAX), s);
    }

    /// The time scale divides delays without panicking or wrapping, for any scale and delay.
    #[test]
    fn time_scale_never_overflows(
        scale in prop_oneof![any::<f64>(), 1e-300f64..1e-3, 1.0f64..1e6, Just(f64::MIN_POSITIVE)],
        secs in prop_oneof![0u64..1_000_000_000, any::<u64>()],
        nanos in 0u32..1_000_000_000,
    ) {
        let clock = Clock::scaled(scale);
        let delay = Duration::new(secs, nanos);
        let scaled = clock.scale(delay);
        if clock.time_scale() >= 1.0 {
            // Speeding up never lengthens a delay (f64 rounding aside: 53 bits of seconds).
            let slack = delay.as_secs_f64() * 1e-15 + 1e-9;
            prop_assert!(scaled.as_secs_f64() <= delay.as_secs_f64() + slack, "{scaled:?} > {delay:?}");
        }
        let now = clock.now_ms();
        let due = clock.due_in(delay);
        prop_assert!(due >= now);
        // A longer delay is never due earlier.
        prop_assert!(clock.due_in(delay.saturating_add(Duration::from_secs(1))) >= due);
    }
}

// ---------------------------------------------------------------------------------------------
// Signatures

const NOW: i64 = 1_795_514_400;
const KEEP: i64 = 7 * 24 * 3600;

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        "\\PC{0,200}".prop_map(String::into_bytes),
        Just(br#"{"id":"ev_1","type":"order.finalized/v1","data":{}}"#.to_vec()),
    ]
}

fn msg_id() -> impl Strategy<Value = String> {
    prop_oneof![Just("6f1c1f8e-3b8c-4a43-9d3c-0a8f6b1e2d11".to_string()), "[ -~]{0,40}", "\\PC{0,10}"]
}

fn timestamp() -> impl Strategy<Value = i64> {
    prop_oneof![Just(NOW), any::<i64>()]
}

/// Every key the Standard Webhooks receiver may try: the JWKS's OKP keys.
fn standard_webhooks_ok(ring_jwks: &serde_json::Value, id: &str, ts: &str, body: &[u8], sig: &str) -> bool {
    verify::ed25519_public_keys(ring_jwks)
        .iter()
        .any(|pk| verify::standard_webhooks(pk, id, ts, body, sig).is_ok())
}

/// `text` with the byte at `at` (mod its length) replaced by another ASCII byte.
fn change_byte(text: &str, at: usize, to: u8) -> Option<String> {
    if text.is_empty() {
        return None;
    }
    let mut bytes = text.as_bytes().to_vec();
    let i = at % bytes.len();
    let mut to = to & 0x7f;
    if to == bytes[i] {
        to = if to == b'A' { b'B' } else { b'A' };
    }
    bytes[i] = to;
    String::from_utf8(bytes).ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(24)))]

    /// Ed25519 (Standard Webhooks v1a) and ES256 (detached JWS) round trips, for any body.
    #[test]
    fn signatures_round_trip(body in body(), id in msg_id(), ts in timestamp()) {
        let ring = KeyRing::generate(NOW);
        let signer = ring.signer();
        let jwks = ring.jwks(NOW, KEEP);

        let sig = signer.standard_webhooks_signature(&id, ts, &body);
        let pk = ring.standard_webhooks_public_key();
        prop_assert!(verify::standard_webhooks(&pk, &id, &ts.to_string(), &body, &sig).is_ok());
        prop_assert!(standard_webhooks_ok(&jwks, &id, &ts.to_string(), &body, &sig));

        let jws = signer.detached_jws(&body);
        prop_assert!(verify::detached_jws(&jwks, &jws, &body).is_ok(), "{jws}");
        // And the JWS is really detached: header..signature.
        prop_assert_eq!(jws.split('.').nth(1), Some(""));
    }

    /// Any single-byte change of the body or of either signature fails verification.
    #[test]
    fn any_single_byte_change_fails(
        body in body(),
        id in msg_id(),
        at in any::<usize>(),
        flip in 1u8..=255,
        to in any::<u8>(),
    ) {
        let ring = KeyRing::generate(NOW);
        let signer = ring.signer();
        let jwks = ring.jwks(NOW, KEEP);
        let pk = ring.standard_webhooks_public_key();
        let ts = NOW.to_string();
        let sig = signer.standard_webhooks_signature(&id, NOW, &body);
        let jws = signer.detached_jws(&body);

        if !body.is_empty() {
            let mut changed = body.clone();
            let i = at % changed.len();
            changed[i] ^= flip;
            prop_assert!(verify::standard_webhooks(&pk, &id, &ts, &changed, &sig).is_err());
            prop_assert!(verify::detached_jws(&jwks, &jws, &changed).is_err());
        }
        let longer = [body.as_slice(), b" "].concat();
        prop_assert!(verify::standard_webhooks(&pk, &id, &ts, &longer, &sig).is_err());
        prop_assert!(verify::detached_jws(&jwks, &jws, &longer).is_err());

        let bad_sig = change_byte(&sig, at, to).expect("ASCII");
        prop_assert!(verify::standard_webhooks(&pk, &id, &ts, &body, &bad_sig).is_err(), "{bad_sig}");
        let bad_jws = change_byte(&jws, at, to).expect("ASCII");
        prop_assert!(verify::detached_jws(&jwks, &bad_jws, &body).is_err(), "{bad_jws}");
        // The id and the timestamp are signed too.
        let other_id = format!("{id}x");
        prop_assert!(verify::standard_webhooks(&pk, &other_id, &ts, &body, &sig).is_err());
        prop_assert!(verify::standard_webhooks(&pk, &id, &(NOW + 1).to_string(), &body, &sig).is_err());
    }

    /// A key retired by rotation still verifies while it is published (`retired_at + keep`),
    /// through the JWKS a receiver fetches; after that its kid is unknown.
    #[test]
    fn retired_but_published_keys_still_verify(
        body in body(),
        after in 0i64..1_000_000,
        keep in 1i64..=KEEP,
        later in 0i64..2 * KEEP,
        rotations in 1usize..=3,
    ) {
        let mut ring = KeyRing::generate(NOW);
        let old = ring.signer();
        let jws = old.detached_jws(&body);
        let sig = old.standard_webhooks_signature("msg_1", NOW, &body);
        let retired_at = NOW + after;
        for r in 0..rotations {
            // Later rotations do not move the first retirement.
            ring.rotate(retired_at + r as i64);
        }
        let now = retired_at + later;
        let jwks = ring.jwks(now, keep);
        let published = later < keep;
        prop_assert_eq!(verify::detached_jws(&jwks, &jws, &body).is_ok(), published);
        prop_assert_eq!(standard_webhooks_ok(&jwks, "msg_1", &NOW.to_string(), &body, &sig), published);
        if !published {
            let unknown = matches!(verify::detached_jws(&jwks, &jws, &body), Err(SigningError::UnknownKid(_)));
            prop_assert!(unknown);
        }
        // The active signer always verifies.
        prop_assert!(verify::detached_jws(&jwks, &ring.signer().detached_jws(&body), &body).is_ok());
    }
}
