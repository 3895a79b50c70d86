//! Property tests (proptest) of the idempotency rules, against a real sled store in a temporary
//! directory: arbitrary sequences of catalog records (creates with and without keys, deletes,
//! barriers, at log times that may go back as well as forth, as records of several proposers
//! do) are applied to the store and to a model written from the rules in
//! `crates/store/src/idempotency.rs`, and every outcome must agree.
//!
//! The rules: the first create under a key in its scope creates (or meets the owner's limit),
//! and that outcome is kept; a repeat with the same request while the key is kept is refused
//! with the first outcome (`KeyUsed`), another request with `KeyMismatch`, and neither creates;
//! a key is kept for `ttl` of log time after its first use, then the next create under it is a
//! first use again; keys of different scopes never meet. Case counts stay small (each case opens
//! sled); `PROPTEST_CASES=N` raises them for a deeper run (docs/fuzzing.md).

use std::collections::BTreeMap;

use proptest::prelude::*;
use webhookd_core::catalog::{CatalogRecord, Change, FirstOutcome, IdempotencyClaim};
use webhookd_core::subscription::{RaboEventType, RaboStatus, RaboSubscription, Subscription};
use webhookd_store::{Applied, Store, StoreError};

/// The number of cases: `default`, or `PROPTEST_CASES` when set (for a deeper run; an explicit
/// `with_cases` would otherwise ignore it).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Scopes and keys chosen to collide if the record key were a plain concatenation.
const SCOPES: [&str; 3] = ["2:m11:u", "2:m1", "2:m11:u:"];
const KEYS: [&str; 3] = ["k", "1:uk", ""];
const REQUESTS: [&str; 3] = [r#"{"a":1}"#, r#"{"a":2}"#, "raw:ff"];
const MERCHANT: &str = "m-1";

#[derive(Clone, Debug)]
enum Op {
    /// A create, with a key or without, `shift` ms of log time after the previous record.
    Create { claim: Option<(usize, usize, usize)>, shift: i64 },
    /// Deletes the `n`th subscription created so far (frees a place under the limit).
    Delete { n: usize, shift: i64 },
    /// A record that changes nothing (time passes).
    Barrier { shift: i64 },
}

fn op(ttl: u64) -> impl Strategy<Value = Op> {
    let t = ttl as i64;
    let shift = prop_oneof![Just(0i64), -t / 2..t / 4 + 1, 0..2 * t + 2];
    let claim = proptest::option::weighted(0.85, (0..3usize, 0..3usize, 0..3usize));
    prop_oneof![
        6 => (claim, shift.clone()).prop_map(|(claim, shift)| Op::Create { claim, shift }),
        2 => (0..8usize, shift.clone()).prop_map(|(n, shift)| Op::Delete { n, shift }),
        1 => shift.prop_map(|shift| Op::Barrier { shift }),
    ]
}

fn case() -> impl Strategy<Value = (u64, u32, Vec<Op>)> {
    (1u64..1_000, 1u32..4)
        .prop_flat_map(|(ttl, limit)| (Just(ttl), Just(limit), proptest::collection::vec(op(ttl), 1..32)))
}

fn subscription(n: usize) -> Subscription {
    Subscription::Rabo(RaboSubscription {
        id: format!("wsb_{n:021}"),
        merchant_id: MERCHANT.into(),
        status: RaboStatus::Enabled,
        url: "https://a.example/hook".into(),
        description: None,
        event_types: vec![RaboEventType::OrderFinalized],
        created_at_ms: n as u64,
    })
}

/// What the model keeps of a key.
#[derive(Clone, Debug, PartialEq)]
struct Kept {
    request: usize,
    expires_at_ms: u64,
    first: FirstOutcome,
}

/// The model's view of a create's outcome.
#[derive(Debug, PartialEq)]
enum Outcome {
    Created,
    LimitReached,
    KeyUsed(FirstOutcome),
    KeyMismatch,
}

fn outcome_of(applied: Applied) -> Outcome {
    match applied {
        Applied::Changed(None) => Outcome::Created,
        Applied::Refused(StoreError::LimitReached { .. }) => Outcome::LimitReached,
        Applied::Refused(StoreError::KeyUsed(first)) => Outcome::KeyUsed(*first),
        Applied::Refused(StoreError::KeyMismatch) => Outcome::KeyMismatch,
        other => panic!("a create cannot end as {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(64)))]

    #[test]
    fn outcomes_follow_the_rules((ttl, limit, ops) in case()) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let twin_dir = tempfile::tempdir().unwrap();
        let twin = Store::open(twin_dir.path()).unwrap();
        let mut kept: BTreeMap<(usize, usize), Kept> = BTreeMap::new();
        let mut live: Vec<usize> = Vec::new();
        let mut made = 0usize;
        let mut now: u64 = 1 << 40;
        for (i, op) in ops.iter().enumerate() {
            let shift = match op {
                Op::Create { shift, .. } | Op::Delete { shift, .. } | Op::Barrier { shift } => *shift,
            };
            now = now.saturating_add_signed(shift);
            // Every record forgets the keys whose time is up at its log time.
            kept.retain(|_, k| k.expires_at_ms > now);
            let change = match op {
                Op::Create { claim, .. } => {
                    let n = made;
                    made += 1;
                    Change::Create {
                        subscription: subscription(n),
                        max_per_owner: Some(limit),
                        idempotency: claim.map(|(s, k, r)| IdempotencyClaim::new(SCOPES[s], KEYS[k], REQUESTS[r], ttl)),
                    }
                }
                Op::Delete { n, .. } => Change::Delete { id: subscription(*n).id(), owner: None },
                Op::Barrier { .. } => Change::Barrier,
            };
            let record = CatalogRecord::new(uuid::Uuid::nil(), now, change.clone());
            let applied = store.apply_record(&record, i as u64).unwrap();
            twin.apply_record(&record, i as u64).unwrap();
            match op {
                Op::Create { claim, .. } => {
                    let n = made - 1;
                    let fresh = |live: &mut Vec<usize>| {
                        if live.len() as u32 >= limit {
                            (Outcome::LimitReached, FirstOutcome::LimitReached { limit })
                        } else {
                            live.push(n);
                            (Outcome::Created, FirstOutcome::Created { subscription: subscription(n) })
                        }
                    };
                    let want = match claim {
                        None => fresh(&mut live).0,
                        Some((s, k, r)) => match kept.get(&(*s, *k)) {
                            Some(k) if k.request == *r => Outcome::KeyUsed(k.first.clone()),
                            Some(_) => Outcome::KeyMismatch,
                            None => {
                                let (outcome, first) = fresh(&mut live);
                                kept.insert((*s, *k), Kept { request: *r, expires_at_ms: now + ttl, first });
                                outcome
                            }
                        },
                    };
                    prop_assert_eq!(outcome_of(applied), want, "op {} {:?} at {}", i, op, now);
                }
                Op::Delete { n, .. } => {
                    let was = live.iter().position(|x| x == n);
                    prop_assert_eq!(matches!(applied, Applied::Changed(Some(_))), was.is_some(), "op {} {:?}", i, op);
                    if let Some(at) = was {
                        live.remove(at);
                    }
                }
                Op::Barrier { .. } => prop_assert!(matches!(applied, Applied::Changed(None))),
            }
        }
        // What is kept is exactly the model's keys (forgotten ones are gone from the store).
        for (s, scope) in SCOPES.iter().enumerate() {
            for (k, key) in KEYS.iter().enumerate() {
                let stored = store.idempotency_key(scope, key).unwrap();
                let want = kept.get(&(s, k));
                prop_assert_eq!(stored.as_ref().map(|r| (&r.first, r.expires_at_ms)), want.map(|k| (&k.first, k.expires_at_ms)));
            }
        }
        prop_assert_eq!(store.catalog_digest().unwrap(), twin.catalog_digest().unwrap(), "same records, same catalog");
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
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let other_body = format!("{body}!");
        let mut offset = 0;
        let mut create = |scope: &str, request: &str, at: u64, n: usize| {
            let change = Change::Create {
                subscription: subscription(n),
                max_per_owner: None,
                idempotency: Some(IdempotencyClaim::new(scope, &key, request, ttl)),
            };
            offset += 1;
            store.apply_record(&CatalogRecord::new(uuid::Uuid::nil(), at, change), offset).unwrap()
        };
        let first = FirstOutcome::Created { subscription: subscription(1) };

        prop_assert!(matches!(create(&scope, &body, start, 1), Applied::Changed(None)));
        prop_assert_eq!(outcome_of(create(&scope, &body, start, 2)), Outcome::KeyUsed(first.clone()));
        prop_assert_eq!(outcome_of(create(&scope, &other_body, start, 3)), Outcome::KeyMismatch);
        // Another caller's scope is another key.
        let other_scope = format!("{scope}x");
        prop_assert!(matches!(create(&other_scope, &body, start, 4), Applied::Changed(None)));
        // Kept for ttl of log time from the first use; records from a proposer whose clock is
        // behind see it as well.
        prop_assert_eq!(outcome_of(create(&scope, &body, start + ttl - 1, 5)), Outcome::KeyUsed(first.clone()));
        prop_assert_eq!(outcome_of(create(&scope, &body, start.saturating_sub(ttl), 6)), Outcome::KeyUsed(first));
        prop_assert!(matches!(create(&scope, &other_body, start + ttl, 7), Applied::Changed(None)));
        prop_assert_eq!(store.subscriptions().count(), 3, "subscriptions 1, 4 and 7 only");
    }
}
