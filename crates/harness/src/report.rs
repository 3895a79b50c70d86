//! The replay report: per (event, subscription) what was expected and what happened, plus what
//! the receivers saw (signatures, duplicates) and the faults injected.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use uuid::Uuid;
use webhookd_core::ids::rabo_event_id;

use crate::receiver::Received;

/// One attempt in the report.
#[derive(Clone, Debug, Serialize)]
pub struct AttemptRow {
    /// When it started (RFC 3339).
    pub at: String,
    /// HTTP status, if any.
    pub status: Option<u64>,
    /// Duration, milliseconds.
    pub duration_ms: u64,
}

/// The result for one (event, subscription).
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// The event.
    pub event_id: String,
    /// The subscription's scenario name.
    pub subscription: String,
    /// Expected outcome.
    pub expected: String,
    /// Expected number of attempts, if any.
    pub expected_attempts: Option<u32>,
    /// Expected least number of attempts, if any.
    pub expected_min_attempts: Option<u32>,
    /// What happened (a delivery state, or `none`).
    pub actual: String,
    /// The attempts in webhookd's delivery log.
    pub attempts: Vec<AttemptRow>,
    /// Requests its receiver got for it (more than the log when an outcome was lost in a crash).
    pub received: usize,
    /// Whether it matched.
    pub matched: bool,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Messages of the capture published.
    pub published: usize,
    /// Per (event, subscription).
    pub rows: Vec<Row>,
    /// Requests whose signature did not verify (path and reason).
    pub signature_failures: Vec<String>,
    /// Requests received by all receivers.
    pub requests_received: usize,
    /// Successful receipts of a delivery beyond its first (at-least-once at work).
    pub duplicates: usize,
    /// Repeated deliveries whose event id differs from the first receipt's (must be none).
    pub duplicate_id_mismatches: Vec<String>,
    /// Requests received beyond the attempts in the delivery log, over all rows.
    pub attempts_not_logged: usize,
    /// The actions run, with when.
    pub actions: Vec<String>,
    /// webhookd replicas in the run.
    pub replicas: usize,
    /// Expected deliveries whose state in another replica's delivery log differs from the
    /// first replica's at the end (must be none: every replica folds the same log).
    pub logs_disagree: Vec<String>,
    /// Each replica's catalog digest at the end, once all applied as far (must be equal).
    pub catalog_digests: Vec<String>,
    /// True when every row matched in every replica's log, every signature verified, every
    /// duplicate carried its event's id, and the replicas' catalogs are equal.
    pub passed: bool,
    /// Seconds the replay took.
    pub seconds: f64,
}

impl Report {
    /// The most requests one delivery's receiver got beyond the attempts in its log (a kill -9
    /// can leave the attempt it cut short out of the log: at most one per kill).
    pub fn most_attempts_missing(&self) -> usize {
        self.rows.iter().map(|r| r.received.saturating_sub(r.attempts.len())).max().unwrap_or(0)
    }

    /// The kills of a webhookd among the actions run (a broker node's is not one).
    pub fn kills(&self) -> usize {
        self.actions.iter().filter(|a| a.starts_with("kill") && !a.starts_with("kill_broker_node")).count()
    }

    /// A readable table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "scenario {}: {} published, {} requests received, {} rows, {} mismatches, {} signature failures, \
             {} duplicates ({} with another event id), {} attempts not in the log: {}\n",
            self.scenario,
            self.published,
            self.requests_received,
            self.rows.len(),
            self.rows.iter().filter(|r| !r.matched).count(),
            self.signature_failures.len(),
            self.duplicates,
            self.duplicate_id_mismatches.len(),
            self.attempts_not_logged,
            if self.passed { "PASSED" } else { "FAILED" }
        );
        for a in &self.actions {
            out.push_str(&format!("action: {a}\n"));
        }
        if self.replicas > 1 {
            let digests: std::collections::BTreeSet<&String> = self.catalog_digests.iter().collect();
            out.push_str(&format!(
                "{} replicas: {} catalog digest(s) at the end, {} deliveries shown otherwise by another replica's log\n",
                self.replicas,
                digests.len(),
                self.logs_disagree.len()
            ));
        }
        out.push_str("EVENT\tSUBSCRIPTION\tEXPECTED\tACTUAL\tATTEMPTS\tRECEIVED\tSTATUSES\tMATCH\n");
        for r in &self.rows {
            let statuses: Vec<String> =
                r.attempts.iter().map(|a| a.status.map_or("-".into(), |s| s.to_string())).collect();
            let expected = match (r.expected_attempts, r.expected_min_attempts) {
                (Some(n), _) => format!("{} after {n}", r.expected),
                (None, Some(n)) => format!("{} after >={n}", r.expected),
                (None, None) => r.expected.clone(),
            };
            out.push_str(&format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                r.event_id,
                r.subscription,
                expected,
                r.actual,
                r.attempts.len(),
                r.received,
                statuses.join(","),
                if r.matched { "ok" } else { "MISMATCH" }
            ));
        }
        for f in &self.signature_failures {
            out.push_str(&format!("signature: {f}\n"));
        }
        for m in &self.duplicate_id_mismatches {
            out.push_str(&format!("duplicate: {m}\n"));
        }
        for d in self.logs_disagree.iter().take(20) {
            out.push_str(&format!("logs disagree: {d}\n"));
        }
        out
    }
}

/// What the receivers saw, per subscription and event.
#[derive(Debug, Default)]
pub struct Receipts {
    /// Requests per (subscription name, event id).
    pub per_delivery: HashMap<(String, String), usize>,
    /// Successful receipts beyond the first, per delivery.
    pub duplicates: usize,
    /// Repeats that carried another event id than the first receipt, or none that we know.
    pub id_mismatches: Vec<String>,
}

/// Sorts the requests `(subscription name, request)` into deliveries.
///
/// A delivery is known by what its receiver would deduplicate on: `webhook-id` (Standard
/// Webhooks) or the subscription and `x-smartpay-event-id` (Rabo). The event id of a request is
/// read from its body (OBP `event_id`, Rabo `id`, mapped back through `events`).
pub fn receipts(requests: &[(String, Received)], events: &[Uuid]) -> Receipts {
    let rabo_ids: HashMap<String, Uuid> = events.iter().map(|e| (rabo_event_id(*e), *e)).collect();
    let mut out = Receipts::default();
    // delivery key -> (event id of the first successful receipt, successful receipts)
    let mut successes: BTreeMap<String, (Option<Uuid>, usize)> = BTreeMap::new();
    for (sub, r) in requests {
        let body = r.json();
        let (key, event) = match r.header("webhook-id") {
            Some(id) => {
                let event = body.as_ref().and_then(|b| b["event_id"].as_str()?.parse::<Uuid>().ok());
                (format!("webhook-id {id}"), event)
            }
            None => {
                let header = r.header("x-smartpay-event-id").unwrap_or_default();
                let event = body.as_ref().and_then(|b| rabo_ids.get(b["id"].as_str()?).copied());
                (format!("{sub} {header}"), event)
            }
        };
        if let Some(e) = event {
            *out.per_delivery.entry((sub.clone(), e.to_string())).or_default() += 1;
        }
        if !(200..300).contains(&r.status_sent) {
            continue;
        }
        let slot = successes.entry(key.clone()).or_insert((event, 0));
        slot.1 += 1;
        if slot.1 > 1 {
            out.duplicates += 1;
            if event.is_none() || event != slot.0 {
                out.id_mismatches.push(format!(
                    "{key}: first receipt carried event {:?}, a repeat carried {event:?}",
                    slot.0
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::SystemTime;

    fn request(headers: &[(&str, &str)], body: String, status: u16) -> Received {
        Received {
            method: "POST".into(),
            path: "/s".into(),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body: Bytes::from(body),
            at: SystemTime::now(),
            status_sent: status,
        }
    }

    #[test]
    fn repeats_are_counted_per_delivery_and_a_changed_event_id_is_caught() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let obp = |event: Uuid, status| {
            request(&[("webhook-id", "d-1")], format!(r#"{{"event_id":"{event}"}}"#), status)
        };
        let rabo = |event: Uuid| {
            let id = rabo_event_id(event);
            request(&[("x-smartpay-event-id", &id)], format!(r#"{{"id":"{id}"}}"#), 200)
        };
        let requests = vec![
            ("ledger".to_string(), obp(a, 503)),
            ("ledger".to_string(), obp(a, 200)),
            ("ledger".to_string(), obp(a, 200)),
            ("shop".to_string(), rabo(b)),
            ("shop".to_string(), rabo(b)),
            ("other-shop".to_string(), rabo(b)),
        ];
        let r = receipts(&requests, &[a, b]);
        assert_eq!(r.duplicates, 2, "one repeat for ledger, one for shop; other-shop is another delivery");
        assert!(r.id_mismatches.is_empty());
        assert_eq!(r.per_delivery[&("ledger".to_string(), a.to_string())], 3);
        assert_eq!(r.per_delivery[&("shop".to_string(), b.to_string())], 2);

        // The same webhook-id with another event id in the body is a broken duplicate.
        let broken = vec![("ledger".to_string(), obp(a, 200)), ("ledger".to_string(), obp(b, 200))];
        let r = receipts(&broken, &[a, b]);
        assert_eq!(r.duplicates, 1);
        assert_eq!(r.id_mismatches.len(), 1, "{:?}", r.id_mismatches);
    }

    #[test]
    fn the_worst_gap_between_receipts_and_the_log_is_per_delivery_and_kills_are_counted() {
        let row = |received: usize, logged: usize| Row {
            event_id: "e".into(),
            subscription: "s".into(),
            expected: "delivered".into(),
            expected_attempts: None,
            expected_min_attempts: None,
            actual: "delivered".into(),
            attempts: vec![AttemptRow { at: String::new(), status: Some(200), duration_ms: 1 }; logged],
            received,
            matched: true,
        };
        let report = Report {
            scenario: "x".into(),
            published: 3,
            rows: vec![row(1, 1), row(3, 1), row(2, 2), row(0, 1)],
            signature_failures: Vec::new(),
            requests_received: 6,
            duplicates: 0,
            duplicate_id_mismatches: Vec::new(),
            attempts_not_logged: 2,
            actions: vec![
                "kill after 5 events".into(),
                "restart_broker after 9".into(),
                "kill_replica 1".into(),
                "kill_broker_node (node 2)".into(),
            ],
            replicas: 1,
            logs_disagree: Vec::new(),
            catalog_digests: vec!["d".into()],
            passed: true,
            seconds: 1.0,
        };
        assert_eq!(report.most_attempts_missing(), 2);
        assert_eq!(report.kills(), 2);
    }
}
