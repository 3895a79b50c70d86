//! The chaos scenario (docs/reliability.md), through the replay harness with its own broker:
//! events fanning out to several subscriptions each; receivers answering 503 to 10% of requests
//! at random, one receiver down for 20 s; webhookd killed with SIGKILL at three random moments;
//! the broker restarted once; a subscription disabled and another deleted while their retries
//! are pending. Every expected delivery must arrive at least once, every repeat must carry its
//! event's id.
//!
//! CI runs 2,000 events. The full run (20,000 events, a few minutes):
//! `WEBHOOKD_CHAOS_EVENTS=20000 cargo test --release -p webhookd --test it chaos -- --nocapture`
//! (`WEBHOOKD_CHAOS_SEED` picks other kill moments).

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use webhookd_harness::capture::CapturedMessage;
use webhookd_harness::fixtures::{balance_day, mix, order_burst, BANK_IDS};
use webhookd_harness::replay::{replay, ReplayOptions, Speed};
use webhookd_harness::scenario::{
    Action, ActionKind, Behaviour, Events, Expectation, Outcome, ReceiverSpec, Scenario, SubscriptionSpec,
    WebhookdSettings, Window,
};

const ACCOUNTS: usize = 4;
const MERCHANTS: usize = 3;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Balance changes of a few accounts and orders of a few merchants, interleaved by time.
fn chaos_events(n: usize) -> Vec<CapturedMessage> {
    mix(balance_day(21, ACCOUNTS, n / 2), order_burst(22, MERCHANTS, n - n / 2))
}

fn receiver(name: &str, behaviour: Behaviour, down: Vec<Window>) -> ReceiverSpec {
    ReceiverSpec { name: name.into(), behaviour, down }
}

fn obp(name: &str, account: usize, trigger: &str, receiver: &str) -> SubscriptionSpec {
    SubscriptionSpec {
        name: name.into(),
        api: "obp".into(),
        receiver: receiver.into(),
        bank_id: Some(BANK_IDS[account % BANK_IDS.len()].into()),
        account_id: Some(format!("acc-{:04}", account + 1)),
        trigger: Some(trigger.into()),
        http_method: None,
        merchant_id: None,
        event_types: None,
    }
}

fn rabo(name: &str, merchant: usize, receiver: &str) -> SubscriptionSpec {
    SubscriptionSpec {
        name: name.into(),
        api: "rabo".into(),
        receiver: receiver.into(),
        bank_id: None,
        account_id: None,
        trigger: None,
        http_method: None,
        merchant_id: Some(format!("merchant-{:02}", merchant + 1)),
        event_types: None,
    }
}

fn expect(subscription: &str, events: Events, outcome: Outcome) -> Expectation {
    Expectation { subscription: subscription.into(), events, outcome, attempts: None, min_attempts: None }
}

fn action(after_events: usize, kind: ActionKind, subscription: Option<&str>) -> Action {
    Action { after_events, wait_ms: 0, kind, subscription: subscription.map(String::from) }
}

/// The chaos scenario for `n` events, its kill moments drawn with `seed`.
fn chaos_scenario(n: usize, seed: u64) -> Scenario {
    let flaky = |seed| Behaviour::RandomFail { rate: 0.1, status: 503, seed };
    let receivers = vec![
        receiver("ledger", flaky(seed), vec![]),
        receiver("cards", flaky(seed + 1), vec![]),
        receiver("shop", flaky(seed + 2), vec![]),
        receiver("erp", flaky(seed + 3), vec![]),
        receiver("dark", Behaviour::Ack, vec![Window { from_ms: 0, until_ms: 20_000 }]),
    ];
    let mut subscriptions = Vec::new();
    for a in 0..ACCOUNTS {
        subscriptions.push(obp(&format!("balance-{a}"), a, "OnBalanceChange", "ledger"));
        subscriptions.push(obp(&format!("credits-{a}"), a, "OnCreditTransaction", "cards"));
        subscriptions.push(obp(&format!("debits-{a}"), a, "OnDebitTransaction", "cards"));
    }
    for m in 0..MERCHANTS {
        subscriptions.push(rabo(&format!("shop-{m}"), m, "shop"));
        subscriptions.push(rabo(&format!("erp-{m}"), m, "erp"));
    }
    subscriptions.push(rabo("dark-orders", 0, "dark"));
    // Their receiver is down when they change, so their retries are pending then.
    subscriptions.push(obp("disabled-balance", 0, "OnBalanceChange", "dark"));
    subscriptions.push(rabo("deleted-orders", 1, "dark"));

    let mut expect_all: Vec<Expectation> = subscriptions
        .iter()
        .filter(|s| !s.name.starts_with("disabled") && !s.name.starts_with("deleted"))
        .map(|s| expect(&s.name, Events::All, Outcome::Delivered))
        .collect();
    for name in ["disabled-balance", "deleted-orders"] {
        expect_all.push(expect(name, Events::Active, Outcome::Delivered));
        expect_all.push(expect(name, Events::Inactive, Outcome::NotDelivered));
    }

    let mut rng = StdRng::seed_from_u64(seed);
    let mut actions = vec![
        action(n * 3 / 10, ActionKind::Disable, Some("disabled-balance")),
        action(n * 3 / 10, ActionKind::Delete, Some("deleted-orders")),
        action(n / 2, ActionKind::RestartBroker, None),
    ];
    for _ in 0..3 {
        actions.push(action(rng.gen_range(n / 10..n * 9 / 10), ActionKind::Kill, None));
    }
    actions.sort_by_key(|a| a.after_events);
    Scenario {
        name: format!("chaos ({n} events, seed {seed})"),
        webhookd: WebhookdSettings { retries: 20, initial_delay_ms: 2_000, timeout_ms: 2_000 },
        receivers,
        subscriptions,
        expect: expect_all,
        actions,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_loses_nothing_and_every_repeat_carries_its_event_id() {
    let n = env_number("WEBHOOKD_CHAOS_EVENTS", 2_000) as usize;
    let seed = env_number("WEBHOOKD_CHAOS_SEED", 7);
    let scenario = chaos_scenario(n, seed);
    scenario.check().unwrap();
    let events = chaos_events(n);
    let options = ReplayOptions {
        webhookd_exe: env!("CARGO_BIN_EXE_webhookd").into(),
        // Its own broker: the scenario restarts it.
        amqp_url: None,
        speed: Speed::Max,
        time_scale: 1000.0,
        deadline: Duration::from_secs(env_number("WEBHOOKD_CHAOS_DEADLINE_SECONDS", 600)),
        progress: true,
    };
    let report = replay(&scenario, &events, &options).await.unwrap();
    let failed: Vec<_> = report.rows.iter().filter(|r| !r.matched).take(20).collect();
    assert!(
        report.passed,
        "{failed:#?}\n{:?}\n{:?}",
        report.signature_failures, report.duplicate_id_mismatches
    );
    assert_eq!(report.actions.len(), 6, "{:?}", report.actions);
    // Zero lost, as the receivers saw it: every delivered row reached its receiver.
    let delivered: Vec<_> = report.rows.iter().filter(|r| r.actual == "delivered").collect();
    assert!(delivered.iter().all(|r| r.received >= 1));
    assert!(delivered.len() > n, "fan-out: {} deliveries for {n} events", delivered.len());
    // The delivery log has every attempt the receivers got, but for what a kill -9 cut short:
    // an attempt in flight, or done and not yet recorded, left its message unacknowledged and
    // is repeated under the same number, so each kill leaves at most one attempt of a delivery
    // out of its log.
    let (kills, worst) = (report.kills(), report.most_attempts_missing());
    assert!(
        worst <= kills,
        "a delivery lacks {worst} attempts in its log after {kills} kills\n{}",
        report.table()
    );
    let retried = report.rows.iter().filter(|r| r.attempts.len() > 1).count();
    assert!(retried > 0, "the faults caused retries");
    eprintln!(
        "chaos: {} events, {} expected deliveries ({} delivered, {} not delivered as expected), \
         {} requests, {} retried, lost 0, duplicates {} (all with their event id), {} attempts not in the log, \
         {:.0} s; actions: {:?}",
        report.published,
        report.rows.len(),
        delivered.len(),
        report.rows.len() - delivered.len(),
        report.requests_received,
        retried,
        report.duplicates,
        report.attempts_not_logged,
        report.seconds,
        report.actions
    );
}
