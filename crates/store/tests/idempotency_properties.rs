//! Property tests (proptest) of the idempotency rules, against a real sled store in a temporary
//! directory: arbitrary sequences of (scope, key, request, time) operations are run on the store
//! and on a model written from the rules in `crates/store/src/idempotency.rs`, and every outcome
//! must agree.
//!
//! The rules: the first use of a key is `Fresh`; a repeat with the same request is `InProgress`
//! until the first request completes, then `Replay` of its response; a repeat with a different
//! request is `Mismatch`; a record is forgotten `ttl` after its request started, and an
//! unfinished one is taken over (`Fresh`, keeping its resource id for the same request) after
//! `abandon`; keys of different scopes never meet. Case counts stay small (each case opens sled);
//! `PROPTEST_CASES=N` raises them for a deeper run (docs/fuzzing.md).

use std::collections::BTreeMap;

use proptest::prelude::*;
use webhookd_store::idempotency::{Begin, StoredResponse, Times};
use webhookd_store::Store;

/// The number of cases: `default`, or `PROPTEST_CASES` when set (for a deeper run; an explicit
/// `with_cases` would otherwise ignore it).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Scopes and keys chosen to collide if the record key were a plain concatenation.
const SCOPES: [&str; 3] = ["2:m11:u", "2:m1", "2:m11:u:"];
const KEYS: [&str; 3] = ["k", "1:uk", ""];
const REQUESTS: [&str; 3] = [r#"{"a":1}"#, r#"{"a":2}"#, "raw:ff"];

#[derive(Clone, Debug)]
enum Op {
    /// `idempotency_begin` at `now + advance`.
    Begin { scope: usize, key: usize, request: usize, advance: u64 },
    /// `idempotency_complete` with a response of this status.
    Complete { scope: usize, key: usize, status: u16 },
    /// `idempotency_abandon` (a 5xx answer frees the key).
    Abandon { scope: usize, key: usize },
    /// `prune_idempotency` at `now + advance`.
    Prune { advance: u64 },
}

fn op(ttl: u64) -> impl Strategy<Value = Op> {
    let advance = prop_oneof![Just(0u64), 0..ttl / 4 + 1, 0..2 * ttl + 2];
    prop_oneof![
        6 => (0..3usize, 0..3usize, 0..3usize, advance.clone())
            .prop_map(|(scope, key, request, advance)| Op::Begin { scope, key, request, advance }),
        3 => (0..3usize, 0..3usize, prop_oneof![Just(201u16), Just(400), Just(403)])
            .prop_map(|(scope, key, status)| Op::Complete { scope, key, status }),
        1 => (0..3usize, 0..3usize).prop_map(|(scope, key)| Op::Abandon { scope, key }),
        1 => advance.prop_map(|advance| Op::Prune { advance }),
    ]
}

fn case() -> impl Strategy<Value = (u64, u64, u64, Vec<Op>)> {
    (1u64..1_000, prop_oneof![Just(u64::MAX - 10_000), 0u64..1_000_000_000_000]).prop_flat_map(
        |(ttl, start)| {
            // Abandonment before, at or after expiry.
            let abandon = prop_oneof![0..ttl, Just(ttl), ttl..3 * ttl];
            (Just(ttl), abandon, Just(start), proptest::collection::vec(op(ttl), 1..24))
        },
    )
}

/// What the model remembers of a key.
#[derive(Clone, Debug)]
struct Record {
    request: &'static str,
    started_ms: u64,
    response: Option<StoredResponse>,
    resource_id: String,
}

fn response(status: u16) -> StoredResponse {
    StoredResponse {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: format!("{{\"status\":{status}}}").into_bytes(),
    }
}

/// The documented rules, written out on their own.
fn model_begin(
    records: &mut BTreeMap<(usize, usize), Record>,
    at: (usize, usize),
    request: &'static str,
    times: Times,
    new_id: &str,
) -> Begin {
    let mut resource_id = new_id.to_string();
    if let Some(record) = records.get(&at) {
        let expired = record.started_ms.saturating_add(times.ttl_ms) <= times.now_ms;
        let abandoned =
            record.response.is_none() && record.started_ms.saturating_add(times.abandon_ms) <= times.now_ms;
        if !expired && !abandoned {
            return if record.request != request {
                Begin::Mismatch
            } else {
                match &record.response {
                    Some(stored) => Begin::Replay(stored.clone()),
                    None => Begin::InProgress,
                }
            };
        }
        // A takeover of the same request's unfinished attempt keeps its resource id, so a create
        // that completed before its process died is found rather than made twice.
        if abandoned && !expired && record.request == request {
            resource_id = record.resource_id.clone();
        }
    }
    records.insert(
        at,
        Record { request, started_ms: times.now_ms, response: None, resource_id: resource_id.clone() },
    );
    Begin::Fresh { resource_id }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(64)))]

    #[test]
    fn outcomes_follow_the_rules((ttl, abandon, start, ops) in case()) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut model: BTreeMap<(usize, usize), Record> = BTreeMap::new();
        let mut now = start;
        for (i, op) in ops.iter().enumerate() {
            match *op {
                Op::Begin { scope, key, request, advance } => {
                    now = now.saturating_add(advance);
                    let times = Times { now_ms: now, ttl_ms: ttl, abandon_ms: abandon };
                    let new_id = format!("wsb_{i:021}");
                    let got = store
                        .idempotency_begin(SCOPES[scope], KEYS[key], REQUESTS[request], times, &new_id)
                        .unwrap();
                    let want = model_begin(&mut model, (scope, key), REQUESTS[request], times, &new_id);
                    prop_assert_eq!(got, want, "op {} {:?} at {}", i, op, now);
                }
                Op::Complete { scope, key, status } => {
                    runtime
                        .block_on(store.idempotency_complete(SCOPES[scope], KEYS[key], response(status)))
                        .unwrap();
                    if let Some(record) = model.get_mut(&(scope, key)) {
                        record.response = Some(response(status));
                    }
                }
                Op::Abandon { scope, key } => {
                    store.idempotency_abandon(SCOPES[scope], KEYS[key]).unwrap();
                    model.remove(&(scope, key));
                }
                Op::Prune { advance } => {
                    now = now.saturating_add(advance);
                    let removed = store.prune_idempotency(now, ttl).unwrap();
                    let before = model.len();
                    model.retain(|_, r| r.started_ms.saturating_add(ttl) > now);
                    prop_assert_eq!(removed, before - model.len(), "op {} prune at {}", i, now);
                }
            }
        }
    }

    /// The scenario of the API documentation, step by step, for any key, request and times.
    #[test]
    fn a_key_lives_through_its_documented_states(
        key in "[ -~]{1,64}",
        scope in "[0-9]{1,2}:[a-z0-9-]{1,12}[0-9]{1,2}:[a-z0-9-]{1,12}",
        body in "\\PC{0,64}",
        start in 0u64..1 << 50,
        ttl in 2u64..1 << 30,
    ) {
        let abandon = ttl / 2;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let at = |now_ms: u64| Times { now_ms, ttl_ms: ttl, abandon_ms: abandon };
        let other_body = format!("{body}!");
        let begin = |request: &str, now: u64, id: &str| store.idempotency_begin(&scope, &key, request, at(now), id).unwrap();

        prop_assert_eq!(begin(&body, start, "r1"), Begin::Fresh { resource_id: "r1".into() });
        prop_assert_eq!(begin(&body, start, "r2"), Begin::InProgress);
        prop_assert_eq!(begin(&other_body, start, "r2"), Begin::Mismatch);
        // Another caller's scope is another key.
        let other_scope = format!("{scope}x");
        prop_assert_eq!(
            store.idempotency_begin(&other_scope, &key, &body, at(start), "r3").unwrap(),
            Begin::Fresh { resource_id: "r3".into() }
        );
        // The first request died: after `abandon` the same request takes over, with its id.
        prop_assert_eq!(begin(&body, start + abandon, "r4"), Begin::Fresh { resource_id: "r1".into() });
        let stored = response(201);
        runtime.block_on(store.idempotency_complete(&scope, &key, stored.clone())).unwrap();
        prop_assert_eq!(begin(&body, start + abandon, "r5"), Begin::Replay(stored.clone()));
        prop_assert_eq!(begin(&other_body, start + abandon, "r5"), Begin::Mismatch);
        // Expiry counts from the start of the request that holds the key.
        prop_assert_eq!(begin(&body, start + abandon + ttl - 1, "r6"), Begin::Replay(stored));
        prop_assert_eq!(begin(&other_body, start + abandon + ttl, "r7"), Begin::Fresh { resource_id: "r7".into() });
        prop_assert_eq!(store.prune_idempotency(start + abandon + 2 * ttl, ttl).unwrap(), 2);
    }
}
