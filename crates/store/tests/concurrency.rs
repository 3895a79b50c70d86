//! Many concurrent writers that each wait for durability: nothing stalls (a regression test:
//! sled's own `flush_async` deadlocked here with 32 concurrent transactional writers).

use std::time::Duration;

use webhookd_core::subscription::{RaboEventType, RaboStatus, RaboSubscription, Subscription};
use webhookd_store::{Change, Store};

fn rabo(id: String, url: String) -> Subscription {
    Subscription::Rabo(RaboSubscription {
        id,
        merchant_id: "m".into(),
        status: RaboStatus::Enabled,
        url,
        description: None,
        event_types: vec![RaboEventType::OrderFinalized],
        created_at_ms: 1,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_durable_changes_all_complete() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut tasks = Vec::new();
    for t in 0..32 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..100 {
                s.apply(Change::Put { subscription: rabo(format!("wsb_{t}"), format!("https://h/{i}")) })
                    .await
                    .unwrap();
            }
        }));
    }
    let all = async {
        for t in tasks {
            t.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all).await.expect("concurrent writers stalled");
    assert_eq!(store.subscriptions().count(), 32);
    drop(store);
    // Everything acknowledged is on disk.
    let store = Store::open(dir.path()).unwrap();
    for t in 0..32 {
        let Some(Subscription::Rabo(s)) = store.subscription(&format!("wsb_{t}")).unwrap() else {
            panic!("wsb_{t} lost")
        };
        assert_eq!(s.url, "https://h/99");
    }
}
