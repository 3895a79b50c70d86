//! Applying the catalog log: the same records in the same order give every replica's store the
//! same state and the same answers, the applied position travels in the change's transaction,
//! and a record seen before changes nothing.

use uuid::Uuid;
use webhookd_core::catalog::{CatalogRecord, Change, SubscriptionPatch};
use webhookd_core::subscription::{RaboEventType, RaboStatus, RaboSubscription, Subscription};
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
            Applied::Seen => panic!("record {offset} seen twice"),
        })
        .collect()
}

#[test]
fn forty_creates_for_one_merchant_give_the_same_thirty_two_on_every_replica() {
    let epoch = Uuid::new_v4();
    // The creates of three replicas, interleaved as the log happened to order them.
    let log: Vec<CatalogRecord> = (0..40)
        .map(|n| {
            let change = Change::Create { subscription: rabo(n, "m-1"), max_per_owner: Some(32) };
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
    for (_, store) in &replicas {
        assert_eq!(store.subscriptions_of_merchant("m-1").unwrap().len(), 32);
        assert_eq!(store.catalog_position().unwrap(), Some(CatalogPosition { epoch, offset: 39 }));
    }
}

#[test]
fn patches_of_different_fields_from_two_replicas_both_take_effect() {
    let epoch = Uuid::new_v4();
    let id = rabo(1, "m-1").id();
    let url = SubscriptionPatch { url: Some("https://new.example/hook".into()), ..Default::default() };
    let log = vec![
        CatalogRecord::new(epoch, 1, Change::Create { subscription: rabo(1, "m-1"), max_per_owner: None }),
        CatalogRecord::new(epoch, 2, Change::Patch { id: id.clone(), patch: url }),
        CatalogRecord::new(
            epoch,
            2,
            Change::Patch { id: id.clone(), patch: SubscriptionPatch::active(false) },
        ),
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
fn a_record_seen_before_changes_nothing_and_a_refusal_still_advances_the_position() {
    let (_dir, store) = stores(1).pop().unwrap();
    let epoch = Uuid::new_v4();
    assert_eq!(store.catalog_position().unwrap(), None);
    let create =
        CatalogRecord::new(epoch, 1, Change::Create { subscription: rabo(1, "m"), max_per_owner: None });
    assert!(matches!(store.apply_record(&create, 10).unwrap(), Applied::Changed(None)));
    // The same offset again (a replica that resumed one record early): skipped.
    assert!(matches!(store.apply_record(&create, 10).unwrap(), Applied::Seen));
    let delete = CatalogRecord::new(epoch, 2, Change::Delete { id: rabo(1, "m").id() });
    assert!(matches!(store.apply_record(&delete, 7).unwrap(), Applied::Seen));
    assert!(store.subscription(&rabo(1, "m").id()).unwrap().is_some(), "an old offset was applied");

    // A patch of a subscription that does not exist is refused, and its offset is taken.
    let patch = CatalogRecord::new(
        epoch,
        3,
        Change::Patch { id: "wsb_missing".into(), patch: SubscriptionPatch::active(false) },
    );
    assert!(matches!(store.apply_record(&patch, 12).unwrap(), Applied::Refused(StoreError::NotFound(_))));
    assert!(store.subscription("wsb_missing").unwrap().is_none(), "a refused patch created something");
    assert_eq!(store.catalog_position().unwrap(), Some(CatalogPosition { epoch, offset: 12 }));

    // A new epoch (the log was created again) starts over: its offsets are not compared with
    // the old life's.
    let other = Uuid::new_v4();
    let again = CatalogRecord::new(other, 4, Change::Delete { id: rabo(1, "m").id() });
    assert!(matches!(store.apply_record(&again, 0).unwrap(), Applied::Changed(Some(_))));
    assert_eq!(store.catalog_position().unwrap(), Some(CatalogPosition { epoch: other, offset: 0 }));
}
