//! The bench's events and the mark each one carries to the receiver.
//!
//! Every event is a Rabo `order.finalized` whose `metadata` (passed through verbatim into the
//! delivered envelope) is a mark `wb:<kind>:<seq>:<stamp_ns>`: what it is, its number, and a
//! wall-clock time in unix nanoseconds (when it was published, or when a stored retry is due).
//! The receiver finds the mark in the body without parsing the JSON, and the receipt time minus
//! the stamp is the latency (both clocks are the same machine's).

use std::time::{SystemTime, UNIX_EPOCH};

use webhookd_core::event::Event;
use webhookd_core::matching::MatchKey;
use webhookd_core::payload::render;
use webhookd_core::subscription::{RaboEventType, Target};

/// What a mark says a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// An event published during a measurement.
    Published = b'P',
    /// A warm-up event (not measured).
    WarmUp = b'W',
    /// A stored retry already due when webhookd starts.
    Overdue = b'O',
    /// A stored retry due during the measurement.
    Due = b'B',
    /// A stored retry due long after the bench (it must not arrive).
    Later = b'L',
    /// A request of the HTTP bound (no webhookd involved).
    Direct = b'H',
}

impl Kind {
    /// The kind of a mark byte.
    pub fn from_byte(b: u8) -> Option<Kind> {
        [Kind::Published, Kind::WarmUp, Kind::Overdue, Kind::Due, Kind::Later, Kind::Direct]
            .into_iter()
            .find(|k| *k as u8 == b)
    }
}

/// The routing key of every bench event.
pub const ROUTING_KEY: &str = "order.finalized";

/// Unix nanoseconds now (wall clock, comparable across processes).
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// The JSON body of one bench event for `merchant`, marked `kind`/`seq`/`stamp_ns`.
pub fn event_body(merchant: &str, kind: Kind, seq: u32, stamp_ns: u64) -> Vec<u8> {
    let occurred = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(stamp_ns))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let occurred = occurred.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    format!(
        concat!(
            r#"{{"type":"order.finalized","event_id":"{}","occurred_at":"{}","merchant_id":"{}","#,
            r#""order_id":"order-{}","status":"COMPLETED","amount":{{"total":1250,"paid":1250}},"#,
            r#""metadata":"wb:{}:{}:{}"}}"#
        ),
        uuid::Uuid::new_v4(),
        occurred,
        merchant,
        seq,
        kind as u8 as char,
        seq,
        stamp_ns
    )
    .into_bytes()
}

/// The envelope webhookd would deliver for `body` to subscription `subscription_id` at `url`:
/// its headers (without signature) and body.
pub fn rendered(
    body: &[u8],
    subscription_id: &str,
    url: &str,
) -> anyhow::Result<(Vec<(String, String)>, String)> {
    let event = Event::decode(body, usize::MAX).map_err(|e| anyhow::anyhow!("bench event: {e}"))?;
    let Event::OrderFinalized(order) = &event else { anyhow::bail!("bench events are orders") };
    let key =
        MatchKey::Rabo { merchant_id: order.merchant_id.clone(), event_type: RaboEventType::OrderFinalized };
    let target = Target {
        subscription_id: subscription_id.to_string(),
        url: url.to_string(),
        http_method: "POST".into(),
        http2: false,
        description: None,
    };
    let r = render(&event, &key, &target);
    Ok((r.headers, r.body))
}

/// A mark found in a request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    /// What the request is.
    pub kind: Kind,
    /// Its number.
    pub seq: u32,
    /// Its stamp, unix nanoseconds.
    pub stamp_ns: u64,
}

/// Finds the mark in a body (a plain byte search: the receiver must stay cheap).
pub fn find_mark(body: &[u8]) -> Option<Mark> {
    const TAG: &[u8] = b"\"wb:";
    let at = body.windows(TAG.len()).position(|w| w == TAG)? + TAG.len();
    let rest = body.get(at..)?;
    let kind = Kind::from_byte(*rest.first()?)?;
    let rest = rest.get(2..)?;
    let end = rest.iter().position(|b| *b == b'"')?;
    let text = std::str::from_utf8(&rest[..end]).ok()?;
    let (seq, stamp) = text.split_once(':')?;
    Some(Mark { kind, seq: seq.parse().ok()?, stamp_ns: stamp.parse().ok()? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_survives_rendering() {
        let body = event_body("m-1", Kind::Published, 42, 1_795_514_400_123_456_789);
        let (headers, envelope) = rendered(&body, "wsb_abc", "http://127.0.0.1:9/r/0").unwrap();
        assert!(headers.iter().any(|(k, _)| k == "x-smartpay-event-type"));
        let mark = find_mark(envelope.as_bytes()).unwrap();
        assert_eq!(mark, Mark { kind: Kind::Published, seq: 42, stamp_ns: 1_795_514_400_123_456_789 });
        assert_eq!(find_mark(b"{\"metadata\":\"other\"}"), None);
    }
}
