//! The chaos scenario (docs/reliability.md), through the replay harness with its own broker:
//! events fanning out to several subscriptions each; receivers answering 503 to 10% of requests
//! at random, one receiver down for 20 s; webhookd killed with SIGKILL at three random moments;
//! the broker restarted once; a subscription disabled and another deleted while their retries
//! are pending. Every expected delivery must arrive at least once, every repeat must carry its
//! event's id.
//!
//! The same across replicas: 3 webhookd replicas on a 3-node cluster, with a replica killed and
//! its data dir deleted, a rolling restart, a broker node killed and one frozen past the tick
//! time, the subscription changes made through different replicas; every replica's delivery log
//! must end with every final state, and every replica with the same catalog.
//!
//! CI runs 2,000 events, and 600 across replicas. The full runs (20,000 events, a few minutes):
//! `WEBHOOKD_CHAOS_EVENTS=20000 cargo test --release -p webhookd --test it chaos_loses -- --nocapture`,
//! `WEBHOOKD_CHAOS_REPLICAS_EVENTS=20000 cargo test --release -p webhookd --test it chaos_across -- --nocapture`
//! (`WEBHOOKD_CHAOS_SEED` picks other fault moments).

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
    Action { subscription: subscription.map(String::from), ..Action::new(after_events, kind) }
}

/// The chaos scenario for `n` events, its kill moments drawn with `seed`: one webhookd, one
/// broker.
fn chaos_scenario(n: usize, seed: u64) -> Scenario {
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
    Scenario { name: format!("chaos ({n} events, seed {seed})"), actions, ..chaos_base(seed) }
}

/// The chaos scenario across replicas: 3 webhookd replicas on a 3-node cluster, with these
/// faults at moments drawn with `seed`: a replica killed with its data dir deleted, a rolling
/// restart of every replica, a broker node killed and restarted, a broker node frozen past the
/// tick time and thawed, a subscription disabled through one replica and another deleted
/// through a second while their retries are pending.
fn chaos_across_replicas(n: usize, seed: u64) -> Scenario {
    let mut rng = StdRng::seed_from_u64(seed);
    let on = |mut a: Action, replica: usize| {
        a.replica = Some(replica);
        a
    };
    let mut moment = || rng.gen_range(n / 10..n * 9 / 10);
    let (wipe_at, node_kill_at, freeze_at) = (moment(), moment(), moment());
    let mut actions = vec![
        on(action(n * 3 / 10, ActionKind::Disable, Some("disabled-balance")), 2),
        on(action(n * 3 / 10, ActionKind::Delete, Some("deleted-orders")), 3),
        Action {
            wipe: true,
            down_ms: 1_000,
            ..on(Action::new(wipe_at, ActionKind::KillReplica), 1 + wipe_at % 3)
        },
        Action {
            node: Some(1 + node_kill_at % 3),
            down_ms: 2_000,
            ..Action::new(node_kill_at, ActionKind::KillBrokerNode)
        },
        Action { node: Some(1 + freeze_at % 3), ..Action::new(freeze_at, ActionKind::FreezeBrokerNode) },
        // Frozen past the tick time (5 s): the other nodes count it down.
        Action {
            node: Some(1 + freeze_at % 3),
            wait_ms: 3 * webhookd_harness::cluster::TICK_TIME.as_millis() as u64,
            ..Action::new(freeze_at, ActionKind::ThawBrokerNode)
        },
    ];
    // The rolling restart: one replica after the other.
    for replica in 1..=3 {
        actions.push(on(Action::new(n * 6 / 10, ActionKind::RestartReplica), replica));
    }
    actions.sort_by_key(|a| a.after_events);
    Scenario {
        name: format!("chaos across replicas ({n} events, seed {seed})"),
        replicas: 3,
        broker_nodes: 3,
        actions,
        ..chaos_base(seed)
    }
}

/// What both chaos scenarios share: receivers answering 503 to 10 % of requests at random and
/// one down for 20 s; events fanning out to several subscriptions each; two subscriptions whose
/// receiver is down when one is disabled and the other deleted.
fn chaos_base(seed: u64) -> Scenario {
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

    Scenario {
        name: String::new(),
        webhookd: WebhookdSettings { retries: 20, initial_delay_ms: 2_000, timeout_ms: 2_000 },
        replicas: 1,
        broker_nodes: 1,
        receivers,
        subscriptions,
        expect: expect_all,
        actions: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_loses_nothing_and_every_repeat_carries_its_event_id() {
    let n = env_number("WEBHOOKD_CHAOS_EVENTS", 2_000) as usize;
    let seed = env_number("WEBHOOKD_CHAOS_SEED", 7);
    let report = run_chaos(chaos_scenario(n, seed), n).await;
    assert_eq!(report.actions.len(), 6, "{:?}", report.actions);
}

// Seed 1 by default: its faults (the stream writer's node frozen, then killed) are the ones
// that found RabbitMQ confirming delivery log records that never reached the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_across_replicas_loses_nothing_and_every_replica_ends_with_the_same_log_and_catalog() {
    let n = env_number("WEBHOOKD_CHAOS_REPLICAS_EVENTS", 600) as usize;
    let seed = env_number("WEBHOOKD_CHAOS_SEED", 1);
    let report = run_chaos(chaos_across_replicas(n, seed), n).await;
    assert_eq!(report.actions.len(), 9, "{:?}", report.actions);
    assert_eq!(report.replicas, 3);
    // Checked by `passed` too; spelled out here.
    assert!(report.logs_disagree.is_empty(), "{:?}", report.logs_disagree);
    assert_eq!(report.catalog_digests.len(), 3);
    assert!(report.catalog_digests.windows(2).all(|w| w[0] == w[1]), "{:?}", report.catalog_digests);
}

/// Replays `scenario` over `n` chaos events with the harness's own brokers and checks what
/// every chaos run must show; the report.
async fn run_chaos(scenario: Scenario, n: usize) -> webhookd_harness::report::Report {
    scenario.check().unwrap();
    let events = chaos_events(n);
    let options = ReplayOptions {
        webhookd_exe: env!("CARGO_BIN_EXE_webhookd").into(),
        // Its own brokers: the scenario restarts them.
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
        "{failed:#?}\n{:?}\n{:?}\n{:?}\n{:?}",
        report.signature_failures,
        report.duplicate_id_mismatches,
        report.logs_disagree,
        report.catalog_digests
    );
    // Zero lost, as the receivers saw it: every delivered row reached its receiver.
    let delivered: Vec<_> = report.rows.iter().filter(|r| r.actual == "delivered").collect();
    assert!(delivered.iter().all(|r| r.received >= 1));
    assert!(delivered.len() > n, "fan-out: {} deliveries for {n} events", delivered.len());
    // The delivery log has every attempt the receivers got, but for what a fault cut short:
    // an attempt in flight, or done and not yet recorded, when its replica was killed or lost
    // its broker node left its message unacknowledged and is repeated under the same number,
    // so each such fault leaves at most one attempt of a delivery out of its log. A graceful
    // restart is such a fault too when its grace runs out with attempts in flight (they are
    // dropped, their messages go back): one CI run saw a delivery lack 4 attempts after 3
    // kills and node faults and a rolling restart whose second stop took 5.6 s.
    let node_faults = report
        .actions
        .iter()
        .filter(|a| {
            a.starts_with("kill_broker_node")
                || a.starts_with("freeze_broker_node")
                || a.starts_with("restart_replica")
        })
        .count();
    let (faults, worst) = (report.kills() + node_faults, report.most_attempts_missing());
    assert!(
        worst <= faults,
        "a delivery lacks {worst} attempts in its log after {faults} kills and node faults\n{}",
        report.table()
    );
    let retried = report.rows.iter().filter(|r| r.attempts.len() > 1).count();
    assert!(retried > 0, "the faults caused retries");
    eprintln!(
        "{}: {} events, {} expected deliveries ({} delivered, {} not delivered as expected), \
         {} requests, {} retried, lost 0, duplicates {} (all with their event id), {} attempts not in the log, \
         {:.0} s; actions: {:?}",
        report.scenario,
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
    report
}
