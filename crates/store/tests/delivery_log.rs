//! The delivery log view: reports folded in any order end at the latest state, and the
//! indexes and pending count follow.

use uuid::Uuid;
use webhookd_core::delivery::{AttemptRecord, Delivery, DeliveryState};
use webhookd_core::delivery_log::LogEntry;
use webhookd_store::{DeliveriesOf, LogPosition, Store};

fn store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (Store::open(dir.path()).unwrap(), dir)
}

fn pending(attempts: u32) -> Delivery {
    Delivery {
        id: Uuid::from_u128(7),
        event_id: Uuid::from_u128(8),
        subscription_id: "sub".into(),
        created_at_ms: 100,
        attempts,
        next_attempt_at_ms: Some(200),
        ..Delivery::fixture()
    }
}

fn finished(attempts: u32, state: DeliveryState) -> Delivery {
    Delivery {
        state,
        next_attempt_at_ms: None,
        finished_at_ms: Some(300 + u64::from(attempts)),
        ..pending(attempts)
    }
}

fn attempt(n: u32, outcome: DeliveryState) -> AttemptRecord {
    AttemptRecord {
        attempt: n,
        at_ms: 100 + u64::from(n),
        duration_ms: 1,
        status: Some(503),
        response_excerpt: String::new(),
        error: None,
        outcome,
    }
}

fn entry(d: &Delivery, attempt: Option<AttemptRecord>) -> LogEntry {
    LogEntry { delivery: d.clone(), attempt }
}

#[test]
fn reports_in_order_build_the_delivery_its_attempts_and_indexes() {
    let (store, _dir) = store();
    let first = pending(1);
    store.record_log(&[entry(&pending(0), None)]).unwrap();
    assert_eq!(store.pending_count(), 1);
    store.record_log(&[entry(&first, Some(attempt(1, DeliveryState::Pending)))]).unwrap();
    let done = finished(2, DeliveryState::Failed);
    store.record_log(&[entry(&done, Some(attempt(2, DeliveryState::Failed)))]).unwrap();
    assert_eq!(store.delivery(&done.id).unwrap(), Some(done.clone()));
    assert_eq!(store.attempts_of(&done.id).unwrap().iter().map(|a| a.attempt).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(store.deliveries_of_event(&done.event_id).unwrap(), std::slice::from_ref(&done));
    assert_eq!(
        store.deliveries_page(DeliveriesOf::Subscription("sub"), None, 0, 10).unwrap(),
        std::slice::from_ref(&done)
    );
    assert_eq!(store.pending_count(), 0);
    // Retention finds it among the finished deliveries.
    assert_eq!(store.prune_finished(u64::MAX, 10).unwrap(), 1);
    assert_eq!(store.delivery(&done.id).unwrap(), None);
}

#[test]
fn a_late_or_repeated_report_does_not_move_the_delivery_back() {
    let (store, _dir) = store();
    let done = finished(2, DeliveryState::Delivered);
    store.record_log(&[entry(&done, Some(attempt(2, DeliveryState::Delivered)))]).unwrap();
    // The report of attempt 1 arrives after the final one (another replica's, or a batch late).
    store.record_log(&[entry(&pending(1), Some(attempt(1, DeliveryState::Pending)))]).unwrap();
    // A deferral report at the same count as the final one (a redelivered event's duplicate).
    store.record_log(&[entry(&pending(2), None)]).unwrap();
    assert_eq!(store.delivery(&done.id).unwrap(), Some(done.clone()));
    assert_eq!(store.pending_count(), 0);
    assert_eq!(store.attempts_of(&done.id).unwrap().len(), 2, "the late attempt is still in the log");
    // A repeat of the final report changes nothing.
    store.record_log(&[entry(&done, Some(attempt(2, DeliveryState::Delivered)))]).unwrap();
    assert_eq!(store.deliveries_of_event(&done.event_id).unwrap(), [done]);
}

#[test]
fn a_redelivery_reopens_a_finished_delivery() {
    let (store, _dir) = store();
    let failed = finished(3, DeliveryState::Failed);
    store.record_log(&[entry(&failed, None)]).unwrap();
    let mut again = failed.clone();
    again.restart(400);
    store.record_log(&[entry(&again, None)]).unwrap();
    assert_eq!(store.delivery(&failed.id).unwrap().map(|d| d.state), Some(DeliveryState::Pending));
    assert_eq!(store.pending_count(), 1);
    // Retention leaves it alone now.
    assert_eq!(store.prune_finished(u64::MAX, 10).unwrap(), 0);
}

#[test]
fn a_record_from_the_stream_is_folded_with_its_offset() {
    let (store, _dir) = store();
    assert_eq!(store.log_position().unwrap(), None);
    let at = |offset| LogPosition { offset, at_ms: 5, mark: Uuid::from_u128(7) };
    let done = finished(1, DeliveryState::Delivered);
    store
        .apply_log(
            &[entry(&pending(0), None), entry(&done, Some(attempt(1, DeliveryState::Delivered)))],
            at(41),
        )
        .unwrap();
    assert_eq!(store.log_position().unwrap(), Some(at(41)));
    assert_eq!(store.delivery(&done.id).unwrap(), Some(done.clone()));
    // Read again after a reconnection: nothing changes but the offset.
    store.apply_log(&[entry(&pending(0), None)], at(42)).unwrap();
    assert_eq!(store.delivery(&done.id).unwrap(), Some(done));
    assert_eq!(store.log_position().unwrap(), Some(at(42)));
    assert_eq!(store.pending_count(), 0);
}
