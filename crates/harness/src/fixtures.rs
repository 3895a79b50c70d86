//! Deterministic, realistic captures for replay tests: a day of balance changes, a burst of
//! finalized orders, and poison messages, all published to `webhookd.events` the way the core
//! banking system does (persistent JSON, routing key = type).
//!
//! Every generator takes a seed and gives the same messages for the same arguments (with the
//! same `rand` version: `StdRng` is not promised to be stable across its releases, which
//! [`fixture_files`]' test would catch). The committed files under `tests/fixtures/` are made
//! by [`fixture_files`]; `tests/fixtures/README.md` says how to regenerate them.
//!
//! Every body either decodes with [`webhookd_core::event::Event::decode`] (limit
//! [`MAX_MESSAGE_BYTES`]) or, for [`poison`], is refused with the reason code in the message's
//! [`EXPECTED_REASON_HEADER`] header.

use std::path::PathBuf;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use time::{Date, Duration, Month, OffsetDateTime};
use uuid::Uuid;

use crate::capture::{CapturedMessage, CapturedProperties};

/// The exchange every fixture message was published to.
pub const EXCHANGE: &str = "webhookd.events";

/// The body size limit the fixtures are made for (webhookd's default `amqp.max_message_bytes`).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Header of a poison message: the `x-webhookd-reason-code` webhookd must dead-letter it with.
pub const EXPECTED_REASON_HEADER: &str = "x-fixture-expected-reason-code";

/// Header of a poison message: what is wrong with it, in a few words.
pub const POISON_HEADER: &str = "x-fixture-poison";

/// The bank ids of [`balance_day`]; account `n` belongs to bank `n % 2`.
pub const BANK_IDS: [&str; 2] = ["gh.29.uk", "nl.bank.01"];

/// The `app_id` property of every fixture message.
const APP_ID: &str = "core-banking";

/// Opening balances are drawn from `0..this` cents.
const MAX_OPENING_BALANCE_CENTS: i64 = 2_000_000;

/// The fixture files: each name under `tests/fixtures/` with the messages it holds.
pub fn fixture_files() -> Vec<(&'static str, Vec<CapturedMessage>)> {
    let mixed = mix(mix(balance_day(11, 40, 250), order_burst(12, 4, 120)), poison(13));
    vec![
        ("balance-day.jsonl", balance_day(1, 300, 3000)),
        ("order-burst.jsonl", order_burst(2, 8, 500)),
        ("mixed-with-poison.jsonl", mixed),
    ]
}

/// The `tests/fixtures/` directory of this checkout.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The reason code a poison message is expected to be dead-lettered with; `None` for events.
pub fn expected_reason_code(message: &CapturedMessage) -> Option<&str> {
    message.properties.headers.as_ref()?.get(EXPECTED_REASON_HEADER)?.as_str()
}

/// `balance.changed` events for `accounts` accounts over 2026-11-24 (UTC), sorted by time.
///
/// Accounts are `acc-0001`, `acc-0002`, ... (at least four digits), alternately at the banks of
/// [`BANK_IDS`], each with an opening balance; every event posts a credit, a debit or (about
/// one in thirty) a zero amount, and carries the account's new balance. Amounts are in EUR with
/// two decimals; `occurred_at` is a few milliseconds before `received_at`.
pub fn balance_day(seed: u64, accounts: usize, events: usize) -> Vec<CapturedMessage> {
    assert!(accounts > 0 || events == 0, "balance_day needs at least one account for its events");
    let mut rng = StdRng::seed_from_u64(seed);
    let width = digits(accounts).max(4);
    let mut balances: Vec<i64> = (0..accounts).map(|_| rng.gen_range(0..MAX_OPENING_BALANCE_CENTS)).collect();
    let mut times = day_times(&mut rng, events);
    times.sort_unstable();
    times
        .into_iter()
        .map(|received_ms| {
            let account = rng.gen_range(0..accounts);
            let amount = transaction_cents(&mut rng);
            balances[account] += amount;
            let received_at = day_start() + Duration::milliseconds(received_ms);
            let event_id = uuid(&mut rng);
            let body = BalanceBody {
                kind: "balance.changed",
                event_id,
                occurred_at: occurred_before(&mut rng, received_at),
                bank_id: BANK_IDS[account % BANK_IDS.len()],
                account_id: format!("acc-{:0width$}", account + 1),
                amount: decimal(amount),
                currency: "EUR",
                balance: decimal(balances[account]),
            };
            let properties = event_properties(event_id, received_at, None);
            let body = serde_json::to_vec(&body).expect("a balance change serializes");
            CapturedMessage::from_parts(EXCHANGE, "balance.changed", properties, &body, received_at)
        })
        .collect()
}

/// `order.finalized` events of `merchants` merchants within one minute from 2026-11-24T12:00Z.
///
/// Merchants are `merchant-01`, `merchant-02`, ... (the first ones busier); about 80% of the
/// orders are `COMPLETED` (paid in full), the rest `CANCELLED` or `EXPIRED` (nothing paid);
/// amounts are in euro cents; about 40% carry `metadata`, and some a `traceparent` header.
pub fn order_burst(seed: u64, merchants: usize, orders: usize) -> Vec<CapturedMessage> {
    assert!(merchants > 0 || orders == 0, "order_burst needs at least one merchant for its orders");
    let mut rng = StdRng::seed_from_u64(seed);
    let width = digits(merchants).max(2);
    let mut next_order: Vec<u32> = (0..merchants).map(|_| rng.gen_range(1000..90_000)).collect();
    let start = day_start() + Duration::hours(12);
    let mut times: Vec<i64> = (0..orders).map(|_| rng.gen_range(0..60_000)).collect();
    times.sort_unstable();
    times
        .into_iter()
        .map(|received_ms| {
            // The smaller of two draws: low-numbered merchants get more of the traffic.
            let merchant = rng.gen_range(0..merchants).min(rng.gen_range(0..merchants));
            let order_no = next_order[merchant];
            next_order[merchant] += 1;
            let (status, total) = match rng.gen_range(0..100) {
                0..=79 => ("COMPLETED", order_total(&mut rng)),
                80..=91 => ("CANCELLED", order_total(&mut rng)),
                _ => ("EXPIRED", order_total(&mut rng)),
            };
            let paid = if status == "COMPLETED" { total } else { 0 };
            let metadata = rng.gen_ratio(2, 5).then(|| order_metadata(&mut rng, order_no));
            let received_at = start + Duration::milliseconds(received_ms);
            let event_id = uuid(&mut rng);
            let body = OrderBody {
                kind: "order.finalized",
                event_id,
                occurred_at: occurred_before(&mut rng, received_at),
                merchant_id: format!("merchant-{:0width$}", merchant + 1),
                order_id: format!("order-{order_no}"),
                status,
                amount: Amount { total, paid },
                metadata,
            };
            let trace = rng.gen_ratio(1, 3).then(|| traceparent(&mut rng));
            let properties = event_properties(event_id, received_at, trace);
            let body = serde_json::to_vec(&body).expect("an order serializes");
            CapturedMessage::from_parts(EXCHANGE, "order.finalized", properties, &body, received_at)
        })
        .collect()
}

/// One message of each kind webhookd refuses (docs/events.md), at times spread over 2026-11-24.
///
/// Each carries [`EXPECTED_REASON_HEADER`] (the reason code it must be dead-lettered with) and
/// [`POISON_HEADER`] (what is wrong): invalid JSON, a body that is not UTF-8, JSON that is not
/// an object, an unknown type, a missing `type`, a missing field, a bad UUID, a bad decimal, a
/// bad time, an empty field, a field of the wrong type, and a body over 64 KiB.
pub fn poison(seed: u64) -> Vec<CapturedMessage> {
    let mut rng = StdRng::seed_from_u64(seed);
    let id = uuid(&mut rng).to_string();
    let balance = |rng: &mut StdRng| {
        serde_json::to_string(&BalanceBody {
            kind: "balance.changed",
            event_id: uuid(rng),
            occurred_at: "2026-11-24T10:00:00.000Z".into(),
            bank_id: BANK_IDS[0],
            account_id: "acc-0007".into(),
            amount: "-12.50".into(),
            currency: "EUR",
            balance: "230.75".into(),
        })
        .expect("a balance change serializes")
    };
    let order = |rng: &mut StdRng, metadata: Option<String>| {
        serde_json::to_string(&OrderBody {
            kind: "order.finalized",
            event_id: uuid(rng),
            occurred_at: "2026-11-24T10:00:00.000Z".into(),
            merchant_id: "merchant-01".into(),
            order_id: "order-4711".into(),
            status: "COMPLETED",
            amount: Amount { total: 1250, paid: 1250 },
            metadata,
        })
        .expect("an order serializes")
    };
    let replace = |body: String, from: &str, to: &str| {
        assert!(body.contains(from), "{from:?} not in {body}");
        body.replacen(from, to, 1).into_bytes()
    };

    let mut latin1 = balance(&mut rng).replace("acc-0007", "caf\u{e9}").into_bytes();
    // Re-encode the `é` as Latin-1: one byte 0xe9 instead of UTF-8's 0xc3 0xa9.
    let at = latin1.windows(2).position(|w| w == [0xc3, 0xa9]).expect("the é is there");
    latin1.splice(at..at + 2, [0xe9]);

    let cases: Vec<(&str, &str, &str, Vec<u8>)> = vec![
        (
            "invalid_json",
            "truncated JSON",
            "balance.changed",
            format!(r#"{{"type":"balance.changed","event_id":"{id}","occurred_at":"2026-11-24T"#).into_bytes(),
        ),
        ("invalid_json", "not UTF-8 (Latin-1 account id)", "balance.changed", latin1),
        (
            "invalid_json",
            "a JSON array, not an object",
            "balance.changed",
            format!(r#"["balance.changed","{id}"]"#).into_bytes(),
        ),
        (
            "unknown_type",
            "unknown type account.opened",
            "account.opened",
            format!(
                r#"{{"type":"account.opened","event_id":"{id}","occurred_at":"2026-11-24T10:00:00Z","bank_id":"gh.29.uk","account_id":"acc-9999"}}"#
            )
            .into_bytes(),
        ),
        (
            "missing_field",
            "no type",
            "balance.changed",
            replace(balance(&mut rng), r#""type":"balance.changed","#, ""),
        ),
        (
            "missing_field",
            "no currency",
            "balance.changed",
            replace(balance(&mut rng), r#""currency":"EUR","#, ""),
        ),
        ("invalid_field", "event_id is not a UUID", "balance.changed", {
            let body = balance(&mut rng);
            let event_id = body.split('"').nth(7).expect("the event id").to_string();
            replace(body, &event_id, "evt-2026-11-24-000017")
        }),
        (
            "invalid_field",
            "amount is not a decimal",
            "balance.changed",
            replace(balance(&mut rng), r#""amount":"-12.50""#, r#""amount":"-12,50""#),
        ),
        (
            "invalid_field",
            "occurred_at is not RFC 3339",
            "order.finalized",
            replace(order(&mut rng, None), "2026-11-24T10:00:00.000Z", "24/11/2026 10:00:00"),
        ),
        (
            "invalid_field",
            "empty bank_id",
            "balance.changed",
            replace(balance(&mut rng), r#""bank_id":"gh.29.uk""#, r#""bank_id":"""#),
        ),
        (
            "invalid_field",
            "amount.total is a string",
            "order.finalized",
            replace(order(&mut rng, None), r#""total":1250"#, r#""total":"1250""#),
        ),
        ("too_large", "70 KB of metadata", "order.finalized", {
            let filler: String = (0..70_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
            order(&mut rng, Some(filler)).into_bytes()
        }),
    ];

    let mut messages: Vec<CapturedMessage> = cases
        .into_iter()
        .map(|(code, what, routing_key, body)| {
            let received_at = day_start() + Duration::milliseconds(rng.gen_range(1000..86_400_000));
            let mut properties = event_properties(uuid(&mut rng), received_at, None);
            properties.headers =
                Some(serde_json::json!({ EXPECTED_REASON_HEADER: code, POISON_HEADER: what }));
            CapturedMessage::from_parts(EXCHANGE, routing_key, properties, &body, received_at)
        })
        .collect();
    messages.sort_by(|a, b| a.received_at.cmp(&b.received_at));
    messages
}

/// Merges `b` into `a` by `received_at`; ties keep `a`'s messages first, then the input order.
///
/// Messages whose `received_at` does not parse sort first.
pub fn mix(mut a: Vec<CapturedMessage>, b: Vec<CapturedMessage>) -> Vec<CapturedMessage> {
    a.extend(b);
    a.sort_by_cached_key(|m| m.received_at().ok());
    a
}

/// The body of a `balance.changed` event, fields in the order of docs/events.md.
#[derive(Serialize)]
struct BalanceBody<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    event_id: Uuid,
    occurred_at: String,
    bank_id: &'a str,
    account_id: String,
    amount: String,
    currency: &'a str,
    balance: String,
}

/// The body of an `order.finalized` event, fields in the order of docs/events.md.
#[derive(Serialize)]
struct OrderBody<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    event_id: Uuid,
    occurred_at: String,
    merchant_id: String,
    order_id: String,
    status: &'a str,
    amount: Amount,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<String>,
}

/// `amount` of an order, in minor units.
#[derive(Serialize)]
struct Amount {
    total: i64,
    paid: i64,
}

/// 2026-11-24T00:00:00Z, the day of the fixtures.
fn day_start() -> OffsetDateTime {
    Date::from_calendar_date(2026, Month::November, 24).expect("a valid date").midnight().assume_utc()
}

/// `n` millisecond offsets into the day, about two thirds of them in business hours (07-20 h).
fn day_times(rng: &mut StdRng, n: usize) -> Vec<i64> {
    const HOUR: i64 = 3_600_000;
    (0..n)
        .map(|_| {
            if rng.gen_ratio(2, 3) {
                rng.gen_range(7 * HOUR..20 * HOUR)
            } else {
                rng.gen_range(1000..24 * HOUR)
            }
        })
        .collect()
}

/// A signed transaction amount in cents: card payments, bills, transfers, salaries, or zero.
fn transaction_cents(rng: &mut StdRng) -> i64 {
    match rng.gen_range(0..100) {
        0..=2 => 0,
        3..=54 => -rng.gen_range(100..12_000),
        55..=66 => -rng.gen_range(2_000..150_000),
        67..=69 => -rng.gen_range(100_000..1_000_000),
        70..=91 => rng.gen_range(100..50_000),
        _ => rng.gen_range(150_000..600_000),
    }
}

/// An order total in cents: mostly small baskets, some large ones.
fn order_total(rng: &mut StdRng) -> i64 {
    match rng.gen_range(0..10) {
        0..=5 => rng.gen_range(100..5_000),
        6..=8 => rng.gen_range(5_000..50_000),
        _ => rng.gen_range(50_000..250_000),
    }
}

/// Free-form merchant metadata, sometimes with non-ASCII text and quotes.
fn order_metadata(rng: &mut StdRng, order_no: u32) -> String {
    match rng.gen_range(0..5) {
        0 => format!("cart {}", rng.gen_range(1..500)),
        1 => format!("invoice INV-2026-{order_no:06}"),
        2 => format!("table {}, {} guests", rng.gen_range(1..40), rng.gen_range(1..9)),
        3 => format!("Bestelling café #{order_no}"),
        _ => format!("gift \"wrapped\", note {}", rng.gen_range(1..100)),
    }
}

/// A W3C `traceparent` header value.
fn traceparent(rng: &mut StdRng) -> serde_json::Value {
    let trace: u128 = rng.gen_range(1..=u128::MAX);
    let span: u64 = rng.gen_range(1..=u64::MAX);
    serde_json::json!({ "traceparent": format!("00-{trace:032x}-{span:016x}-01") })
}

/// A random (version 4) UUID drawn from `rng`.
fn uuid(rng: &mut StdRng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.gen()).into_uuid()
}

/// `occurred_at` for a message received at `received_at`: 2 to 40 ms before, RFC 3339 UTC.
fn occurred_before(rng: &mut StdRng, received_at: OffsetDateTime) -> String {
    crate::capture::format_time(received_at - Duration::milliseconds(rng.gen_range(2..=40)))
}

/// The properties the core banking system publishes events with.
fn event_properties(
    event_id: Uuid,
    received_at: OffsetDateTime,
    headers: Option<serde_json::Value>,
) -> CapturedProperties {
    CapturedProperties {
        content_type: Some("application/json".into()),
        delivery_mode: Some(2),
        message_id: Some(event_id.to_string()),
        timestamp: Some(received_at.unix_timestamp().max(0) as u64),
        app_id: Some(APP_ID.into()),
        headers,
        ..CapturedProperties::default()
    }
}

/// Cents as a decimal string with two decimals, e.g. `-1250` as `-12.50`.
fn decimal(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

/// The number of decimal digits of `n` (1 for 0).
fn digits(n: usize) -> usize {
    n.to_string().len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};
    use webhookd_core::event::{Event, Poison};

    /// Env var that makes [`fixtures_are_up_to_date`] rewrite the files instead of comparing.
    const REGENERATE_ENV: &str = "WEBHOOKD_REGENERATE_FIXTURES";

    /// The largest a fixture file may be.
    const MAX_FILE_BYTES: usize = 2 * 1024 * 1024;

    fn cents(decimal: &str) -> i64 {
        let (whole, fraction) = decimal.split_once('.').expect("two decimals");
        assert_eq!(fraction.len(), 2, "{decimal}");
        let negative = whole.starts_with('-');
        let value =
            whole.trim_start_matches('-').parse::<i64>().unwrap() * 100 + fraction.parse::<i64>().unwrap();
        if negative {
            -value
        } else {
            value
        }
    }

    fn decode(m: &CapturedMessage) -> Result<Event, Poison> {
        Event::decode(&m.body_bytes().unwrap(), MAX_MESSAGE_BYTES)
    }

    fn assert_sorted(messages: &[CapturedMessage]) {
        for pair in messages.windows(2) {
            assert!(pair[0].received_at().unwrap() <= pair[1].received_at().unwrap());
        }
    }

    /// Checks what every event message has in common and returns the decoded events.
    fn decode_events(messages: &[CapturedMessage]) -> Vec<Event> {
        let mut ids = HashSet::new();
        messages
            .iter()
            .map(|m| {
                let event = decode(m).unwrap_or_else(|p| panic!("{} does not decode: {p}", m.to_line()));
                assert_eq!(m.routing_key, event.kind());
                assert_eq!(m.exchange, EXCHANGE);
                assert_eq!(expected_reason_code(m), None);
                assert_eq!(m.properties.message_id, Some(event.event_id().to_string()));
                assert_eq!(m.to_amqp_properties().delivery_mode(), &Some(2));
                assert!(ids.insert(event.event_id()), "duplicate event id {}", event.event_id());
                assert_eq!(event.event_id().get_version_num(), 4);
                let lag = m.received_at().unwrap() - event.occurred_at();
                assert!((2..=40).contains(&lag.whole_milliseconds()), "lag {lag}");
                event
            })
            .collect()
    }

    #[test]
    fn balance_days_decode_with_running_balances() {
        let messages = balance_day(42, 30, 600);
        assert_eq!(messages.len(), 600);
        assert_sorted(&messages);
        let start = day_start();
        assert!(messages.iter().all(|m| {
            let at = m.received_at().unwrap();
            start <= at && at < start + Duration::days(1)
        }));
        let mut last_balance: HashMap<String, i64> = HashMap::new();
        let (mut credits, mut debits, mut zeros) = (0, 0, 0);
        for event in decode_events(&messages) {
            let Event::BalanceChanged(e) = event else { panic!("not a balance change: {event:?}") };
            assert_eq!(e.currency, "EUR");
            let number: usize = e.account_id.strip_prefix("acc-").unwrap().parse().unwrap();
            assert_eq!(e.account_id.len(), 8, "{}", e.account_id);
            assert_eq!(e.bank_id, BANK_IDS[(number - 1) % 2]);
            let (amount, balance) = (cents(&e.amount), cents(&e.balance));
            if let Some(previous) = last_balance.insert(e.account_id.clone(), balance) {
                assert_eq!(previous + amount, balance, "running balance of {}", e.account_id);
            }
            match e.amount_sign() {
                std::cmp::Ordering::Greater => credits += 1,
                std::cmp::Ordering::Less => debits += 1,
                std::cmp::Ordering::Equal => zeros += 1,
            }
        }
        assert!(credits > 100 && debits > 200 && zeros > 0, "{credits} {debits} {zeros}");
        assert!(last_balance.len() > 25, "most accounts see events");
        assert_eq!(balance_day(42, 30, 600), messages, "deterministic");
        assert_ne!(balance_day(43, 30, 600), messages);
        for event in decode_events(&balance_day(1, 10_000, 20)) {
            let Event::BalanceChanged(e) = event else { panic!("not a balance change") };
            assert_eq!(e.account_id.len(), 9, "five digits for 10000 accounts: {}", e.account_id);
        }
    }

    #[test]
    fn order_bursts_decode_within_a_minute() {
        let messages = order_burst(42, 5, 400);
        assert_eq!(messages.len(), 400);
        assert_sorted(&messages);
        let start = day_start() + Duration::hours(12);
        assert!(messages.iter().all(|m| {
            let at = m.received_at().unwrap();
            start <= at && at < start + Duration::minutes(1)
        }));
        let mut statuses = HashMap::new();
        let mut merchants = HashMap::new();
        let mut order_ids = HashSet::new();
        let mut with_metadata = 0;
        for event in decode_events(&messages) {
            let Event::OrderFinalized(e) = event else { panic!("not an order: {event:?}") };
            *statuses.entry(e.status.clone()).or_insert(0) += 1;
            *merchants.entry(e.merchant_id.clone()).or_insert(0) += 1;
            assert!(order_ids.insert((e.merchant_id.clone(), e.order_id.clone())), "order ids are unique");
            assert!(e.amount.total > 0);
            let paid = if e.status == "COMPLETED" { e.amount.total } else { 0 };
            assert_eq!(e.amount.paid, paid);
            with_metadata += usize::from(e.metadata.is_some());
        }
        assert_eq!(statuses.len(), 3, "{statuses:?}");
        assert!(statuses.keys().all(|s| ["COMPLETED", "CANCELLED", "EXPIRED"].contains(&s.as_str())));
        let mut names: Vec<_> = merchants.keys().cloned().collect();
        names.sort();
        assert_eq!(names, ["merchant-01", "merchant-02", "merchant-03", "merchant-04", "merchant-05"]);
        assert!(merchants["merchant-01"] > merchants["merchant-05"], "{merchants:?}");
        assert!((100..250).contains(&with_metadata), "{with_metadata}");
        assert!(messages.iter().any(|m| m.properties.headers.is_some()));
        assert_eq!(order_burst(42, 5, 400), messages, "deterministic");
    }

    #[test]
    fn poison_is_refused_with_the_expected_reason() {
        let messages = poison(7);
        assert_sorted(&messages);
        let mut codes = HashSet::new();
        for m in &messages {
            let expected = expected_reason_code(m).expect("every poison message names its reason");
            let what = &m.properties.headers.as_ref().unwrap()[POISON_HEADER];
            let reason = decode(m).expect_err(&format!("{what} must not decode"));
            assert_eq!(reason.label(), expected, "{what}: {reason}");
            codes.insert(expected);
        }
        let mut codes: Vec<_> = codes.into_iter().collect();
        codes.sort();
        let mut all = Poison::LABELS.to_vec();
        all.sort();
        assert_eq!(codes, all, "one of each reason code at least");
        // The non-UTF-8 body is kept as base64, and each message is refused for one reason only.
        assert!(messages.iter().any(|m| m.body_base64.is_some()));
        let large = messages.iter().find(|m| expected_reason_code(m) == Some("too_large")).unwrap();
        assert!(
            Event::decode(&large.body_bytes().unwrap(), usize::MAX).is_ok(),
            "too large, otherwise valid"
        );
        assert_eq!(poison(7), messages, "deterministic");
    }

    #[test]
    fn mix_merges_by_time() {
        let a = balance_day(5, 10, 50);
        let b = order_burst(6, 2, 20);
        let mixed = mix(a.clone(), b.clone());
        assert_eq!(mixed.len(), 70);
        assert_sorted(&mixed);
        let from_a: Vec<_> = mixed.iter().filter(|m| m.routing_key == "balance.changed").cloned().collect();
        assert_eq!(from_a, a, "each input keeps its order");
        let mut tie = a[0].clone();
        tie.routing_key = "tie".into();
        let mixed = mix(vec![a[0].clone()], vec![tie.clone()]);
        assert_eq!(mixed, vec![a[0].clone(), tie], "ties keep the first input first");
    }

    #[test]
    fn fixtures_are_up_to_date() {
        let regenerate = std::env::var_os(REGENERATE_ENV).is_some_and(|v| !v.is_empty() && v != "0");
        let dir = fixtures_dir();
        for (name, messages) in fixture_files() {
            let path = dir.join(name);
            let expected: String = messages.iter().map(|m| m.to_line() + "\n").collect();
            assert!(expected.len() < MAX_FILE_BYTES, "{name} would be {} bytes", expected.len());
            if regenerate {
                std::fs::write(&path, &expected)
                    .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
                continue;
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!("reading {}: {e}; regenerate with {REGENERATE_ENV}=1 cargo test -p webhookd-harness fixtures_are_up_to_date", path.display())
            });
            if committed != expected {
                let line = committed.lines().zip(expected.lines()).position(|(c, e)| c != e).map_or_else(
                    || {
                        format!(
                            "the files differ in length ({} vs {} lines)",
                            committed.lines().count(),
                            messages.len()
                        )
                    },
                    |i| format!("line {} differs", i + 1),
                );
                panic!(
                    "{} is not what fixtures::fixture_files() generates: {line}. Regenerate it with \
                     {REGENERATE_ENV}=1 cargo test -p webhookd-harness fixtures_are_up_to_date",
                    path.display()
                );
            }
            // The committed file reads back as the same messages.
            assert_eq!(crate::capture::read_capture(&path).unwrap(), messages, "{name}");
        }
    }

    #[test]
    fn the_mixed_fixture_holds_every_kind() {
        let files = fixture_files();
        let (_, mixed) = files.iter().find(|(name, _)| *name == "mixed-with-poison.jsonl").unwrap();
        assert_sorted(mixed);
        let poison: Vec<_> = mixed.iter().filter(|m| expected_reason_code(m).is_some()).collect();
        assert_eq!(poison.len(), super::poison(13).len());
        for m in mixed {
            match expected_reason_code(m) {
                Some(code) => assert_eq!(decode(m).unwrap_err().label(), code),
                None => assert!(decode(m).is_ok()),
            }
        }
        let kinds: HashSet<_> = mixed.iter().map(|m| m.routing_key.as_str()).collect();
        assert!(kinds.contains("balance.changed") && kinds.contains("order.finalized"));
        // Poison is spread through the file, not bunched at one end.
        let first = mixed.iter().position(|m| expected_reason_code(m).is_some()).unwrap();
        let last = mixed.iter().rposition(|m| expected_reason_code(m).is_some()).unwrap();
        assert!(first < mixed.len() / 3 && last > mixed.len() * 2 / 3, "{first} {last} of {}", mixed.len());
    }
}
