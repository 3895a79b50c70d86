//! The delivery log view: reports folded in any order end at the latest state, and the
//! indexes and pending count follow.

use uuid::Uuid;
use webhookd_core::delivery::{AttemptRecord, Delivery, DeliveryState};
use webhookd_core::delivery_log::LogEntry;
use webhookd_store::{DeliveriesOf, DeliveryFilter, LogPosition, Store};

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
        store.deliveries_page(DeliveriesOf::Subscription("sub"), &DeliveryFilter::default(), 0, 10).unwrap(),
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
    again.restart(400, Default::default());
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

/// A delivered delivery of `event` to `subscription`, its id made as the service makes it
/// (the event's time first).
fn delivered_of(event: Uuid, occurred_ms: i64, subscription: &str) -> Delivery {
    Delivery {
        id: webhookd_core::ids::delivery_id(event, occurred_ms, subscription, "order"),
        event_id: event,
        subscription_id: subscription.into(),
        occurred_at_ms: occurred_ms,
        created_at_ms: 100,
        attempts: 1,
        ..finished(1, DeliveryState::Delivered)
    }
}

/// issue 18: "which deliveries failed since 09:00", across subscriptions and events.
#[test]
fn all_deliveries_are_listed_in_event_time_order_within_a_window_and_a_state() {
    let (store, _dir) = store();
    let at = |ms: i64, sub: &str, state: DeliveryState| Delivery {
        state,
        ..delivered_of(Uuid::from_u128(ms as u128), ms, sub)
    };
    let all = [
        at(1_000, "a", DeliveryState::Failed),
        at(2_000, "b", DeliveryState::Delivered),
        at(3_000, "a", DeliveryState::Failed),
        at(4_000, "c", DeliveryState::Failed),
        at(5_000, "b", DeliveryState::Misconfigured),
    ];
    // Folded out of order: the listing follows the events' time, not the fold's.
    store.record_log(&[entry(&all[3], None), entry(&all[0], None), entry(&all[4], None)]).unwrap();
    store.record_log(&[entry(&all[1], None), entry(&all[2], None)]).unwrap();
    let page = |filter: DeliveryFilter, offset, limit| {
        store
            .deliveries_page(DeliveriesOf::All, &filter, offset, limit)
            .unwrap()
            .iter()
            .map(|d| d.occurred_at_ms)
            .collect::<Vec<_>>()
    };
    assert_eq!(page(DeliveryFilter::default(), 0, 10), [1_000, 2_000, 3_000, 4_000, 5_000]);
    let failed = DeliveryFilter { state: Some(DeliveryState::Failed), ..DeliveryFilter::default() };
    assert_eq!(page(failed, 0, 10), [1_000, 3_000, 4_000]);
    assert_eq!(page(failed, 1, 1), [3_000]);
    let window = DeliveryFilter { since_ms: Some(2_000), until_ms: Some(4_000), ..failed };
    assert_eq!(page(window, 0, 10), [3_000]);
    let open_ended = DeliveryFilter { since_ms: Some(3_500), ..DeliveryFilter::default() };
    assert_eq!(page(open_ended, 0, 10), [4_000, 5_000]);
    let reversed =
        DeliveryFilter { since_ms: Some(4_000), until_ms: Some(2_000), ..DeliveryFilter::default() };
    assert!(page(reversed, 0, 10).is_empty());
    // Several events at once (a Rabo `ev_` id stands for a few UUIDs); an unknown one adds none.
    let events = [Uuid::from_u128(5_000), Uuid::from_u128(77), Uuid::from_u128(1_000)];
    let of_events = store.deliveries_page(DeliveriesOf::Events(&events), &DeliveryFilter::default(), 0, 10);
    assert_eq!(of_events.unwrap().iter().map(|d| d.occurred_at_ms).collect::<Vec<_>>(), [5_000, 1_000]);
}

#[test]
fn an_events_deliveries_are_found_through_one_index_entry_among_others_of_the_same_millisecond() {
    let (store, _dir) = store();
    let (event, other) = (Uuid::from_u128(1), Uuid::from_u128(2));
    // Three deliveries of the event, folded in two records, and one of another event that
    // occurred in the same millisecond (its id shares the first bytes).
    let mine: Vec<Delivery> = ["a", "b", "c"].iter().map(|s| delivered_of(event, 5_000, s)).collect();
    let theirs = delivered_of(other, 5_000, "a");
    store.record_log(&[entry(&mine[0], None), entry(&theirs, None)]).unwrap();
    store.record_log(&[entry(&mine[1], None), entry(&mine[2], None)]).unwrap();
    // A repeated entry adds no delivery.
    store.record_log(&[entry(&mine[2], None)]).unwrap();

    let mut expected = mine.clone();
    expected.sort_by_key(|d| d.id);
    assert_eq!(store.deliveries_of_event(&event).unwrap(), expected);
    assert_eq!(store.deliveries_of_event(&other).unwrap(), std::slice::from_ref(&theirs));
    assert!(store.deliveries_of_event(&Uuid::from_u128(3)).unwrap().is_empty());
    let page =
        store.deliveries_page(DeliveriesOf::Events(&[event]), &DeliveryFilter::default(), 1, 1).unwrap();
    assert_eq!(page, [expected[1].clone()]);

    // Retention takes them all (they finished at 301); the entries go with the last of each.
    assert_eq!(store.prune_finished(u64::MAX, 100).unwrap(), 4);
    assert!(store.deliveries_of_event(&event).unwrap().is_empty());
    assert!(store.deliveries_of_event(&other).unwrap().is_empty());
    // A late entry of a pruned delivery comes back as one delivery of its event.
    store.record_log(&[entry(&mine[1], None)]).unwrap();
    assert_eq!(store.deliveries_of_event(&event).unwrap(), [mine[1].clone()]);
}

#[test]
fn retention_sweeps_past_pending_deliveries_a_bounded_stretch_at_a_time() {
    let (store, _dir) = store();
    // 100 deliveries still pending (events at 1_000..1_100), then 20 delivered (events at
    // 2_000..2_020, finished at 301): in id order the pending ones come first.
    let mut pending_ones = Vec::new();
    for i in 0..100u128 {
        let d = Delivery {
            state: DeliveryState::Pending,
            finished_at_ms: None,
            next_attempt_at_ms: Some(9_999),
            ..delivered_of(Uuid::from_u128(100 + i), 1_000 + i as i64, "a")
        };
        pending_ones.push(d);
    }
    let done: Vec<Delivery> =
        (0..20u128).map(|i| delivered_of(Uuid::from_u128(500 + i), 2_000 + i as i64, "a")).collect();
    let entries: Vec<LogEntry> = pending_ones.iter().chain(&done).map(|d| entry(d, None)).collect();
    store.record_log(&entries).unwrap();

    // Two at a time: each call examines at most 32 deliveries, so the first ones find only
    // pending deliveries; the sweep goes on where it stopped until everything finished is gone.
    let mut removed = Vec::new();
    for _ in 0..20 {
        let n = store.prune_finished(1_000_000, 2).unwrap();
        assert!(n <= 2, "{n}");
        removed.push(n);
    }
    assert_eq!(&removed[..3], [0, 0, 0], "{removed:?}");
    assert_eq!(removed.iter().sum::<usize>(), 20, "{removed:?}");
    assert!(done.iter().all(|d| store.delivery(&d.id).unwrap().is_none()));
    assert!(pending_ones.iter().all(|d| store.delivery(&d.id).unwrap().is_some()));
    assert_eq!(store.pending_count(), 100);
}
