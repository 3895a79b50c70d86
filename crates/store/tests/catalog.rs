//! Applying the catalog log: the same records in the same order give every replica's store the
//! same state and the same answers, the applied position travels in the change's transaction,
//! and a record seen before (or a second copy of one change) changes nothing.

use uuid::Uuid;
use webhookd_core::catalog::{CatalogRecord, Change, Owner, SubscriptionPatch};
use webhookd_core::subscription::{Api, RaboEventType, RaboStatus, RaboSubscription, Subscription};
use webhookd_store::{Applied, CatalogPosition, Store, StoreError};

fn rabo(n: usize, merchant: &str) -> Subscription {
    Subscription::Rabo(RaboSubscription {
        id: format!("wsb_{n:021}"),
        merchant_id: merchant.into(),
        status: RaboStatus::Enabled,
        url: format!("https://h.example/{n}"),
        description: None,
        event_types: vec![RaboEventType::OrderFinalized],
        created_at_ms: n as u64,
    })
}

fn merchant(id: &str) -> Option<Owner> {
    Some(Owner { api: Api::Rabo, id: id.into() })
}

fn stores(n: usize) -> Vec<(tempfile::TempDir, Store)> {
    (0..n)
        .map(|_| {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            (dir, store)
        })
        .collect()
}

/// What a replica answers for each record: `Ok` or the refusal's text.
fn apply_all(store: &Store, log: &[CatalogRecord]) -> Vec<Result<(), String>> {
    log.iter()
        .enumerate()
        .map(|(offset, record)| match store.apply_record(record, offset as u64).unwrap() {
            Applied::Changed(_) => Ok(()),
            Applied::Refused(e) => Err(e.to_string()),
            Applied::Repeated => Err("repeated".into()),
            Applied::Seen => panic!("record {offset} seen twice"),
        })
        .collect()
}

#[test]
fn forty_creates_for_one_merchant_give_the_same_thirty_two_on_every_replica() {
    let epoch = Uuid::nil();
    // The creates of three replicas, interleaved as the log happened to order them.
    let log: Vec<CatalogRecord> = (0..40)
        .map(|n| {
            let change =
                Change::Create { subscription: rabo(n, "m-1"), max_per_owner: Some(32), idempotency: None };
            CatalogRecord::new(epoch, 1_000 + n as u64, change)
        })
        .collect();
    let replicas = stores(3);
    let answers: Vec<_> = replicas.iter().map(|(_, s)| apply_all(s, &log)).collect();
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "replicas answered differently");
    assert_eq!(answers[0].iter().filter(|a| a.is_ok()).count(), 32);
    assert!(answers[0][32..].iter().all(|a| a.as_ref().unwrap_err().contains("limit of 32")));
    let digests: Vec<_> = replicas.iter().map(|(_, s)| s.catalog_digest().unwrap()).collect();
    assert!(digests.windows(2).all(|w| w[0] == w[1]));
    // The log's life is named by its first record.
    // Refused changes count as changes too (what the snapshot rule counts).
    let last =
        CatalogPosition { epoch: log[0].change_id, offset: 39, change_id: log[39].change_id, changes: 40 };
    for (_, store) in &replicas {
        assert_eq!(store.subscriptions_of_merchant("m-1").unwrap().len(), 32);
        assert_eq!(store.catalog_position().unwrap(), Some(last));
    }
}

#[test]
fn patches_of_different_fields_from_two_replicas_both_take_effect() {
    let epoch = Uuid::nil();
    let id = rabo(1, "m-1").id();
    let url = SubscriptionPatch { url: Some("https://new.example/hook".into()), ..Default::default() };
    let off = SubscriptionPatch::active(false);
    let log = vec![
        CatalogRecord::new(
            epoch,
            1,
            Change::Create { subscription: rabo(1, "m-1"), max_per_owner: None, idempotency: None },
        ),
        CatalogRecord::new(epoch, 2, Change::Patch { id: id.clone(), owner: merchant("m-1"), patch: url }),
        CatalogRecord::new(epoch, 2, Change::Patch { id: id.clone(), owner: merchant("m-1"), patch: off }),
    ];
    let replicas = stores(2);
    for (_, store) in &replicas {
        assert!(apply_all(store, &log).iter().all(Result::is_ok));
        let Some(Subscription::Rabo(s)) = store.subscription(&id).unwrap() else { panic!("gone") };
        assert_eq!((s.url.as_str(), s.status), ("https://new.example/hook", RaboStatus::Disabled));
    }
    assert_eq!(replicas[0].1.catalog_digest().unwrap(), replicas[1].1.catalog_digest().unwrap());
}

#[test]
fn another_owners_patch_or_delete_is_refused_as_not_found_where_it_is_applied() {
    let (_dir, store) = stores(1).pop().unwrap();
    let epoch = Uuid::nil();
    let id = rabo(1, "m-1").id();
    let log = vec![
        CatalogRecord::new(
            epoch,
            1,
            Change::Create { subscription: rabo(1, "m-1"), max_per_owner: None, idempotency: None },
        ),
        CatalogRecord::new(
            epoch,
            2,
            Change::Patch { id: id.clone(), owner: merchant("m-2"), patch: SubscriptionPatch::active(false) },
        ),
        CatalogRecord::new(epoch, 3, Change::Delete { id: id.clone(), owner: merchant("m-2") }),
        // The same id as an OBP bank's: another API, another owner.
        CatalogRecord::new(
            epoch,
            4,
            Change::Delete { id: id.clone(), owner: Some(Owner { api: Api::Obp, id: "m-1".into() }) },
        ),
    ];
    let answers = apply_all(&store, &log);
    assert!(answers[0].is_ok());
    for answer in &answers[1..] {
        assert!(answer.as_ref().unwrap_err().contains("not found"), "{answer:?}");
    }
    let Some(Subscription::Rabo(s)) = store.subscription(&id).unwrap() else { panic!("deleted") };
    assert_eq!(s.status, RaboStatus::Enabled, "another merchant's patch changed it");
    let delete = CatalogRecord::new(epoch, 5, Change::Delete { id: id.clone(), owner: merchant("m-1") });
    assert!(matches!(store.apply_record(&delete, 10).unwrap(), Applied::Changed(Some(_))));
}

#[test]
fn a_second_copy_of_a_change_is_not_applied_again_even_after_later_changes() {
    let (_dir, store) = stores(1).pop().unwrap();
    let epoch = Uuid::nil();
    let id = rabo(1, "m-1").id();
    let create = CatalogRecord::new(
        epoch,
        1,
        Change::Create { subscription: rabo(1, "m-1"), max_per_owner: None, idempotency: None },
    );
    let to_x = CatalogRecord::new(
        epoch,
        2,
        Change::Patch {
            id: id.clone(),
            owner: merchant("m-1"),
            patch: SubscriptionPatch { url: Some("https://x.example/".into()), ..Default::default() },
        },
    );
    let to_y = CatalogRecord::new(
        epoch,
        3,
        Change::Patch {
            id: id.clone(),
            owner: merchant("m-1"),
            patch: SubscriptionPatch { url: Some("https://y.example/".into()), ..Default::default() },
        },
    );
    // The append of `to_x` was retried (its confirm was lost) after `to_y` was appended.
    let log = vec![create, to_x.clone(), to_y, to_x];
    let answers = apply_all(&store, &log);
    assert_eq!(answers[3], Err("repeated".into()));
    let Some(Subscription::Rabo(s)) = store.subscription(&id).unwrap() else { panic!("gone") };
    assert_eq!(s.url, "https://y.example/", "the second copy undid a later change");
    assert_eq!(store.catalog_position().unwrap().map(|p| p.offset), Some(3), "the copy's offset is taken");

    // A barrier changes nothing and takes its offset; a repeated barrier too.
    let barrier = CatalogRecord::new(epoch, 4, Change::Barrier);
    let digest = store.catalog_digest().unwrap();
    assert!(matches!(store.apply_record(&barrier, 4).unwrap(), Applied::Changed(None)));
    assert!(matches!(store.apply_record(&barrier, 5).unwrap(), Applied::Changed(None)));
    assert_eq!(store.catalog_digest().unwrap(), digest);
    assert_eq!(store.catalog_position().unwrap().map(|p| p.offset), Some(5));
    assert_eq!(store.catalog_position().unwrap().map(|p| p.changes), Some(4), "barriers are not changes");
}

#[test]
fn a_record_seen_before_changes_nothing_and_a_refusal_still_advances_the_position() {
    let (_dir, store) = stores(1).pop().unwrap();
    let epoch = Uuid::nil();
    assert_eq!(store.catalog_position().unwrap(), None);
    let create = CatalogRecord::new(
        epoch,
        1,
        Change::Create { subscription: rabo(1, "m"), max_per_owner: None, idempotency: None },
    );
    assert!(matches!(store.apply_record(&create, 10).unwrap(), Applied::Changed(None)));
    // The same offset again (a replica that resumed at its last record): skipped.
    assert!(matches!(store.apply_record(&create, 10).unwrap(), Applied::Seen));
    let delete = CatalogRecord::new(epoch, 2, Change::Delete { id: rabo(1, "m").id(), owner: None });
    assert!(matches!(store.apply_record(&delete, 7).unwrap(), Applied::Seen));
    assert!(store.subscription(&rabo(1, "m").id()).unwrap().is_some(), "an old offset was applied");

    // A patch of a subscription that does not exist is refused, and its offset is taken.
    let patch = CatalogRecord::new(
        epoch,
        3,
        Change::Patch { id: "wsb_missing".into(), owner: None, patch: SubscriptionPatch::active(false) },
    );
    assert!(matches!(store.apply_record(&patch, 12).unwrap(), Applied::Refused(StoreError::NotFound(_))));
    assert!(store.subscription("wsb_missing").unwrap().is_none(), "a refused patch created something");
    let at = CatalogPosition { epoch, offset: 12, change_id: patch.change_id, changes: 2 };
    assert_eq!(store.catalog_position().unwrap(), Some(at));
}

#[tokio::test]
async fn a_store_loaded_from_a_dump_is_the_same_catalog_and_goes_on_alike() {
    let replicas = stores(2);
    let (old, fresh) = (&replicas[0].1, &replicas[1].1);
    let mut log: Vec<CatalogRecord> = (0..6)
        .map(|n| {
            let change =
                Change::Create { subscription: rabo(n, "m-1"), max_per_owner: Some(5), idempotency: None };
            CatalogRecord::new(Uuid::nil(), n as u64, change)
        })
        .collect();
    log.push(CatalogRecord::new(Uuid::nil(), 9, Change::Delete { id: rabo(0, "m-1").id(), owner: None }));
    apply_all(old, &log);
    let position = old.catalog_position().unwrap().unwrap();
    let dump = old.catalog_dump().unwrap();
    fresh.catalog_load(&dump, position).await.unwrap();
    assert_eq!(fresh.catalog_digest().unwrap(), old.catalog_digest().unwrap());
    assert_eq!(fresh.catalog_position().unwrap(), Some(position));
    assert_eq!(fresh.catalog_dump().unwrap(), dump);
    // The counters and indexes came along: the limit and a second copy behave alike after it.
    let next = [
        CatalogRecord::new(
            position.epoch,
            10,
            Change::Create { subscription: rabo(7, "m-1"), max_per_owner: Some(5), idempotency: None },
        ),
        CatalogRecord::new(
            position.epoch,
            11,
            Change::Create { subscription: rabo(8, "m-1"), max_per_owner: Some(5), idempotency: None },
        ),
        log[3].clone(),
    ];
    for (i, record) in next.iter().enumerate() {
        let offset = position.offset + 1 + i as u64;
        let a = format!("{:?}", old.apply_record(record, offset).unwrap());
        let b = format!("{:?}", fresh.apply_record(record, offset).unwrap());
        assert_eq!(a, b, "record {i}");
    }
    assert_eq!(fresh.catalog_digest().unwrap(), old.catalog_digest().unwrap());
    // A dump cut short or not a dump changes nothing.
    let before = fresh.catalog_digest().unwrap();
    for bad in [&dump[..dump.len() - 3], b"something else".as_slice()] {
        assert!(fresh.catalog_load(bad, position).await.is_err());
    }
    assert_eq!(fresh.catalog_digest().unwrap(), before);
}

#[test]
fn a_record_stamped_with_another_life_of_the_log_is_refused_and_one_stamped_with_none_applied() {
    let (_dir, store) = stores(1).pop().unwrap();
    let first = CatalogRecord::new(Uuid::new_v4(), 1, Change::Barrier);
    assert!(matches!(store.apply_record(&first, 0).unwrap(), Applied::Changed(None)));
    let life = store.catalog_position().unwrap().unwrap().epoch;
    assert_eq!(life, first.change_id, "a log's life is named by its first record");
    let create = |n| Change::Create { subscription: rabo(n, "m"), max_per_owner: None, idempotency: None };
    let stale = CatalogRecord::new(Uuid::new_v4(), 2, create(1));
    assert!(matches!(
        store.apply_record(&stale, 1).unwrap(),
        Applied::Refused(StoreError::StaleEpoch { .. })
    ));
    assert!(matches!(
        store.apply_record(&CatalogRecord::new(Uuid::nil(), 3, create(2)), 2).unwrap(),
        Applied::Changed(None)
    ));
    assert!(matches!(
        store.apply_record(&CatalogRecord::new(life, 4, create(3)), 3).unwrap(),
        Applied::Changed(None)
    ));
    assert_eq!(store.subscriptions().count(), 2);
    assert_eq!(store.catalog_position().unwrap().map(|p| (p.epoch, p.offset)), Some((life, 3)));
}
