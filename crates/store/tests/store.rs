//! The store against a real sled database in a temporary directory.

use webhookd_core::catalog::SubscriptionPatch;
use webhookd_core::delivery::{Delivery, DeliveryState};
use webhookd_core::delivery_log::LogEntry;
use webhookd_core::event::Event;
use webhookd_core::matching::{match_keys, MatchKey};
use webhookd_core::subscription::{
    ObpWebhook, RaboEventType, RaboStatus, RaboSubscription, Subscription, Trigger,
};
use webhookd_store::{Change, Store, StoreError};

fn obp(id: u128, account: &str, trigger: Trigger, active: bool) -> Subscription {
    Subscription::Obp(ObpWebhook {
        account_webhook_id: uuid::Uuid::from_u128(id),
        bank_id: "bank".into(),
        account_id: account.into(),
        trigger,
        url: format!("http://127.0.0.1:9/{id}"),
        http_method: "POST".into(),
        http_protocol: "HTTP/1.1".into(),
        created_by_user_id: "u".into(),
        is_active: active,
        created_at_ms: 1,
    })
}

fn rabo(id: &str, merchant: &str, status: RaboStatus) -> Subscription {
    Subscription::Rabo(RaboSubscription {
        id: id.into(),
        merchant_id: merchant.into(),
        status,
        url: "http://127.0.0.1:9/r".into(),
        description: None,
        event_types: vec![RaboEventType::OrderFinalized, RaboEventType::Test],
        created_at_ms: 1,
    })
}

fn balance(account: &str, amount: &str) -> Event {
    let body = format!(
        r#"{{"type":"balance.changed","event_id":"{}","occurred_at":"2026-11-24T10:00:00Z","bank_id":"bank","account_id":"{account}","amount":"{amount}","currency":"EUR","balance":"1.00"}}"#,
        uuid::Uuid::new_v4()
    );
    Event::decode(body.as_bytes(), 4096).unwrap()
}

fn log(attempt: u32, outcome: DeliveryState) -> webhookd_core::delivery::AttemptRecord {
    webhookd_core::delivery::AttemptRecord {
        attempt,
        at_ms: 1,
        duration_ms: 1,
        status: Some(200),
        response_excerpt: "ack".into(),
        error: None,
        outcome,
    }
}

/// Reports the deliveries of `batch` as known and pending (the delivery log view).
fn report(store: &Store, batch: &[Delivery]) {
    let reports: Vec<_> = batch.iter().map(|d| LogEntry { delivery: d.clone(), attempt: None }).collect();
    store.record_log(&reports).unwrap();
}

/// Reports the delivery of `batch` as finished in `state` after `attempts` at `at`.
fn finish(
    store: &Store,
    batch: &[Delivery],
    _created: u64,
    state: DeliveryState,
    attempts: u32,
    at: u64,
) -> Delivery {
    let done = ended(&batch[0], state, attempts, at);
    store.record_log(&[LogEntry { delivery: done.clone(), attempt: Some(log(attempts, state)) }]).unwrap();
    done
}

/// `d` finished in `state` after `attempts`, at `at`.
fn ended(d: &Delivery, state: DeliveryState, attempts: u32, at: u64) -> Delivery {
    let mut done = d.clone();
    done.attempts = attempts;
    done.state = state;
    done.next_attempt_at_ms = None;
    done.finished_at_ms = Some(at);
    done
}

/// Opens the store in `dir` again. sled releases its file lock when its last I/O task ends,
/// which can be a moment after the previous handle was dropped: retried for up to 2 s.
fn reopen(dir: &std::path::Path) -> Store {
    unlocked(|| Store::open(dir))
}

/// The sled database under the store in `dir`, opened directly (retried as [`reopen`]).
fn raw_sled(dir: &std::path::Path) -> sled::Db {
    unlocked(|| sled::open(dir))
}

fn unlocked<T, E: std::fmt::Debug + std::fmt::Display>(open: impl Fn() -> Result<T, E>) -> T {
    for _ in 0..200 {
        match open() {
            Err(e) if e.to_string().contains("could not acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            opened => return opened.unwrap(),
        }
    }
    panic!("the store stayed locked");
}

/// A fresh store with one active OBP webhook (bank, account `a`, OnBalanceChange).
async fn store_with_webhook() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.apply(Change::Put { subscription: obp(1, "a", Trigger::OnBalanceChange, true) }).await.unwrap();
    (dir, store)
}

fn deliveries_for(store: &Store, event: &Event, now: u64) -> Vec<Delivery> {
    let mut out = Vec::new();
    for key in match_keys(event) {
        for target in store.targets(&key).unwrap() {
            out.push(Delivery::new(event, &key, &target, now, Default::default()));
        }
    }
    out
}

#[tokio::test]
async fn matching_uses_only_active_subscriptions_of_the_key() {
    let (_dir, store) = store_with_webhook().await;
    store.apply(Change::Put { subscription: obp(2, "a", Trigger::OnDebitTransaction, true) }).await.unwrap();
    store.apply(Change::Put { subscription: obp(3, "a", Trigger::OnCreditTransaction, true) }).await.unwrap();
    store.apply(Change::Put { subscription: obp(4, "a", Trigger::OnBalanceChange, false) }).await.unwrap();
    store.apply(Change::Put { subscription: obp(5, "ab", Trigger::OnBalanceChange, true) }).await.unwrap();

    let debit = deliveries_for(&store, &balance("a", "-1.00"), 10);
    let mut subs: Vec<_> = debit.iter().map(|d| d.subscription_id.clone()).collect();
    subs.sort();
    assert_eq!(subs, [uuid::Uuid::from_u128(1).to_string(), uuid::Uuid::from_u128(2).to_string()]);
    assert!(deliveries_for(&store, &balance("a", "0.00"), 10).is_empty());

    // Disabling removes it from the index at once; enabling brings it back.
    store.apply(Change::Put { subscription: obp(1, "a", Trigger::OnBalanceChange, false) }).await.unwrap();
    assert_eq!(deliveries_for(&store, &balance("a", "-1.00"), 10).len(), 1);
    store.apply(Change::Put { subscription: obp(1, "a", Trigger::OnBalanceChange, true) }).await.unwrap();
    assert_eq!(deliveries_for(&store, &balance("a", "-1.00"), 10).len(), 2);

    // Rabo: disabled and deleted subscriptions stop matching.
    store.apply(Change::Put { subscription: rabo("wsb_1", "m", RaboStatus::Enabled) }).await.unwrap();
    store.apply(Change::Put { subscription: rabo("wsb_2", "m", RaboStatus::Disabled) }).await.unwrap();
    let key = MatchKey::Rabo { merchant_id: "m".into(), event_type: RaboEventType::OrderFinalized };
    assert_eq!(store.targets(&key).unwrap().len(), 1);
    store.apply(Change::Delete { id: "wsb_1".into(), owner: None }).await.unwrap();
    assert!(store.targets(&key).unwrap().is_empty());
    assert!(store.subscription("wsb_1").unwrap().is_none());
    assert!(store.apply(Change::Delete { id: "wsb_1".into(), owner: None }).await.is_err());
    // An update after a delete does not bring the subscription back.
    let disable = Change::Patch { id: "wsb_1".into(), owner: None, patch: SubscriptionPatch::active(false) };
    assert!(matches!(store.apply(disable).await, Err(StoreError::NotFound(_))));
    assert!(store.subscription("wsb_1").unwrap().is_none());
}

#[tokio::test]
async fn everything_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let event = balance("a", "-5.00");
    let id;
    {
        let store = Store::open(dir.path()).unwrap();
        store
            .apply(Change::Put { subscription: obp(1, "a", Trigger::OnDebitTransaction, true) })
            .await
            .unwrap();
        let batch = deliveries_for(&store, &event, 100);
        id = batch[0].id;
        report(&store, &batch);
        store.flush().await.unwrap();
    }
    let store = reopen(dir.path());
    assert_eq!(store.subscriptions().count(), 1);
    assert_eq!(store.delivery(&id).unwrap().unwrap().state, DeliveryState::Pending);
    assert_eq!(store.pending_count(), 1, "pending deliveries are counted at open");
    assert_eq!(store.subscription_counts().unwrap(), [("obp".to_string(), "active".to_string(), 1)]);
}

#[tokio::test]
async fn the_pending_count_is_kept_in_the_store_through_every_transition() {
    let dir = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    {
        let store = Store::open(dir.path()).unwrap();
        store.apply(Change::Put { subscription: obp(1, "a", Trigger::OnBalanceChange, true) }).await.unwrap();
        for created in [100, 200, 300, 400] {
            let batch = deliveries_for(&store, &balance("a", "1.00"), created);
            report(&store, &batch);
            ids.push(batch);
        }
        finish(&store, &ids[0], 100, DeliveryState::Delivered, 1, 101);
        let failed = finish(&store, &ids[1], 200, DeliveryState::Failed, 21, 201);
        let mut again = failed.clone();
        again.restart(1_000, Default::default());
        store.record_log(&[LogEntry { delivery: again, attempt: None }]).unwrap();
        finish(&store, &ids[2], 300, DeliveryState::Misconfigured, 1, 301);
        assert_eq!(store.pending_count(), 2);
        store.flush().await.unwrap();
    }
    let store = reopen(dir.path());
    assert_eq!(store.pending_count(), 2, "read back at open, not counted");
    let next = deliveries_for(&store, &balance("a", "2.00"), 500);
    report(&store, &next);
    assert_eq!(store.pending_count(), 3);
    store.flush().await.unwrap();
    drop(store);

    // The count is read from the store, not counted: a planted count is what open reports.
    {
        let db = raw_sled(dir.path());
        db.open_tree("meta").unwrap().insert("pending_count", &42i64.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    assert_eq!(reopen(dir.path()).pending_count(), 42);
    // A store written before the count was kept has none: it is counted once at open.
    {
        let db = raw_sled(dir.path());
        assert!(db.open_tree("meta").unwrap().remove("pending_count").unwrap().is_some());
        db.flush().unwrap();
    }
    let store = reopen(dir.path());
    assert_eq!(store.pending_count(), 3);
    finish(&store, &next, 500, DeliveryState::Delivered, 1, 501);
    store.flush().await.unwrap();
    drop(store);
    assert_eq!(reopen(dir.path()).pending_count(), 2);
}

#[tokio::test]
async fn creates_respect_the_owner_limit_and_list_in_creation_order() {
    use webhookd_store::StoreError;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mk = |id: &str, at: u64| {
        let Subscription::Rabo(mut r) = rabo(id, "m", RaboStatus::Enabled) else { unreachable!() };
        r.created_at_ms = at;
        Subscription::Rabo(r)
    };
    let create =
        |s: Subscription| Change::Create { subscription: s, max_per_owner: Some(2), idempotency: None };
    store.apply(create(mk("wsb_b", 20))).await.unwrap();
    store.apply(create(mk("wsb_a", 30))).await.unwrap();
    assert!(matches!(store.apply(create(mk("wsb_c", 40))).await, Err(StoreError::LimitReached { limit: 2 })));
    assert!(matches!(store.apply(create(mk("wsb_a", 50))).await, Err(StoreError::Exists(_))));
    // Another merchant has its own count.
    let Subscription::Rabo(mut other) = rabo("wsb_x", "n", RaboStatus::Enabled) else { unreachable!() };
    other.created_at_ms = 1;
    store.apply(create(Subscription::Rabo(other))).await.unwrap();

    let ids: Vec<_> = store.subscriptions_of_merchant("m").unwrap().iter().map(|s| s.id()).collect();
    assert_eq!(ids, ["wsb_b", "wsb_a"], "creation order, not id order");
    // Updating keeps the count; deleting frees a slot.
    store.apply(Change::Put { subscription: mk("wsb_a", 30) }).await.unwrap();
    assert!(store.apply(create(mk("wsb_c", 40))).await.is_err());
    store.apply(Change::Delete { id: "wsb_b".into(), owner: None }).await.unwrap();
    store.apply(create(mk("wsb_c", 40))).await.unwrap();
    let ids: Vec<_> = store.subscriptions_of_merchant("m").unwrap().iter().map(|s| s.id()).collect();
    assert_eq!(ids, ["wsb_a", "wsb_c"]);

    store.apply(Change::Put { subscription: obp(7, "a", Trigger::OnBalanceChange, true) }).await.unwrap();
    assert_eq!(store.subscriptions_of_bank("bank").unwrap().len(), 1);
    assert!(store.subscriptions_of_bank("other").unwrap().is_empty());
}

#[tokio::test]
async fn retention_prunes_only_finished_deliveries_older_than_the_cutoff() {
    let (_dir, store) = store_with_webhook().await;
    // Three deliveries of events at T (the events' time): finished at T + 100, finished at
    // T + 5_000, still pending.
    const T: u64 = 1_795_514_400_000;
    let mut ids = Vec::new();
    for (created, finished_at) in [(T + 10, Some(T + 100)), (T + 20, Some(T + 5_000)), (T + 30, None)] {
        let event = balance("a", "1.00");
        let batch = deliveries_for(&store, &event, created);
        report(&store, &batch);
        ids.push((batch[0].id, event.event_id()));
        let Some(at) = finished_at else { continue };
        finish(&store, &batch, created, DeliveryState::Delivered, 1, at);
    }
    // Before the events' time nothing can have finished: the sweep stops at once.
    assert_eq!(store.prune_finished(T, 100).unwrap(), 0);
    assert_eq!(store.prune_finished(T + 1_000, 100).unwrap(), 1);
    assert!(store.delivery(&ids[0].0).unwrap().is_none());
    assert!(store.attempts_of(&ids[0].0).unwrap().is_empty(), "its log goes with it");
    assert!(store.deliveries_of_event(&ids[0].1).unwrap().is_empty());
    assert!(store.delivery(&ids[1].0).unwrap().is_some(), "finished after the cutoff: kept");
    assert_eq!(store.attempts_of(&ids[1].0).unwrap().len(), 1);
    assert!(store.delivery(&ids[2].0).unwrap().is_some(), "pending: never pruned");
    assert_eq!(store.prune_finished(T + 1_000, 100).unwrap(), 0);
    // Everything finished goes once the cutoff passes it; the pending one stays.
    assert_eq!(store.prune_finished(u64::MAX, 100).unwrap(), 1);
    assert!(store.delivery(&ids[2].0).unwrap().is_some());
    assert_eq!(store.pending_count(), 1);
}

#[tokio::test]
async fn retention_removes_many_deliveries_across_its_transaction_groups() {
    let (_dir, store) = store_with_webhook().await;
    // 150 finished deliveries: more than two of retention's groups of 64; one left pending.
    let mut finished = Vec::new();
    for created in 1..=150 {
        let batch = deliveries_for(&store, &balance("a", "1.00"), created);
        report(&store, &batch);
        finished.push(finish(&store, &batch, created, DeliveryState::Delivered, 1, created + 1).id);
    }
    let pending = deliveries_for(&store, &balance("a", "2.00"), 500);
    report(&store, &pending);
    // A batch limit is honoured across groups, then the rest goes.
    assert_eq!(store.prune_finished(u64::MAX, 100).unwrap(), 100);
    assert_eq!(store.prune_finished(u64::MAX, 100).unwrap(), 50);
    assert_eq!(store.prune_finished(u64::MAX, 100).unwrap(), 0);
    for id in &finished {
        assert!(store.delivery(id).unwrap().is_none());
        assert!(store.attempts_of(id).unwrap().is_empty());
    }
    assert!(store.delivery(&pending[0].id).unwrap().is_some(), "pending: never pruned");
    assert_eq!(store.pending_count(), 1);
}
