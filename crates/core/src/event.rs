//! The event contract: what the core banking system publishes, and why a message is refused.
//!
//! Decoding never panics: any input either becomes an [`Event`] or a [`Poison`] that names the
//! reason, which the ingestion puts into the dead-letter header.

use serde::Deserialize;
use time::OffsetDateTime;
use uuid::Uuid;

/// A validated event from the core banking system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The balance of an account changed (one posted transaction).
    BalanceChanged(BalanceChanged),
    /// A Rabo Smart Pay order reached its final status.
    OrderFinalized(OrderFinalized),
    /// A test event for a merchant's `test/v1` subscriptions.
    Test(TestEvent),
}

/// `balance.changed`: one posted transaction on an account.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct BalanceChanged {
    /// Unique id of the event, kept on every delivery and retry.
    pub event_id: Uuid,
    /// When the transaction was posted.
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    /// OBP bank id.
    pub bank_id: String,
    /// OBP account id.
    pub account_id: String,
    /// Signed decimal amount; negative for debits.
    pub amount: String,
    /// ISO 4217 currency code.
    pub currency: String,
    /// The new balance, decimal.
    pub balance: String,
}

/// `order.finalized`: a Smart Pay order reached its final status.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct OrderFinalized {
    /// Unique id of the event, kept on every delivery and retry.
    pub event_id: Uuid,
    /// When the order was finalized.
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    /// The merchant owning the order (and the subscriptions).
    pub merchant_id: String,
    /// The merchant's order id.
    pub order_id: String,
    /// Final status of the order (e.g. `COMPLETED`).
    pub status: String,
    /// Amounts in minor units.
    pub amount: OrderAmount,
    /// Merchant's free-form metadata, passed through.
    #[serde(default)]
    pub metadata: Option<String>,
}

/// Amounts of an order, in minor units.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct OrderAmount {
    /// Total amount of the order.
    pub total: i64,
    /// Amount paid.
    pub paid: i64,
}

/// `test`: a test event for a merchant.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct TestEvent {
    /// Unique id of the event.
    pub event_id: Uuid,
    /// When the test event was made.
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    /// The merchant whose `test/v1` subscriptions receive it.
    pub merchant_id: String,
}

/// Why a message was refused; the ingestion dead-letters it with this reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Poison {
    /// The body exceeds the configured size limit.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the body.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The body is not a JSON object.
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    /// The `type` is not one we know.
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    /// A required field is absent.
    #[error("missing field `{0}`")]
    MissingField(String),
    /// A field has the wrong type or an invalid value.
    #[error("invalid field: {0}")]
    InvalidField(String),
}

impl Poison {
    /// The longest text a refusal carries, in bytes.
    pub const MAX_DETAIL_BYTES: usize = 256;

    /// The same refusal with its text cut to [`Poison::MAX_DETAIL_BYTES`].
    fn bounded(self) -> Poison {
        let cut = |mut text: String| {
            if text.len() > Poison::MAX_DETAIL_BYTES {
                let mut end = Poison::MAX_DETAIL_BYTES;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
                text.push_str("...");
            }
            text
        };
        match self {
            Poison::InvalidJson(t) => Poison::InvalidJson(cut(t)),
            Poison::UnknownType(t) => Poison::UnknownType(cut(t)),
            Poison::MissingField(t) => Poison::MissingField(cut(t)),
            Poison::InvalidField(t) => Poison::InvalidField(cut(t)),
            too_large @ Poison::TooLarge { .. } => too_large,
        }
    }

    /// Every label [`Poison::label`] can return.
    pub const LABELS: [&'static str; 5] =
        ["too_large", "invalid_json", "unknown_type", "missing_field", "invalid_field"];

    /// A short, fixed label for metrics (bounded cardinality).
    pub fn label(&self) -> &'static str {
        match self {
            Poison::TooLarge { .. } => "too_large",
            Poison::InvalidJson(_) => "invalid_json",
            Poison::UnknownType(_) => "unknown_type",
            Poison::MissingField(_) => "missing_field",
            Poison::InvalidField(_) => "invalid_field",
        }
    }
}

impl Event {
    /// Decodes and validates one message body. A refusal's text is at most
    /// [`Poison::MAX_DETAIL_BYTES`] long (it goes into a header and a log line, and can quote
    /// the message).
    pub fn decode(body: &[u8], max_bytes: usize) -> Result<Event, Poison> {
        Event::decode_unbounded(body, max_bytes).map_err(Poison::bounded)
    }

    fn decode_unbounded(body: &[u8], max_bytes: usize) -> Result<Event, Poison> {
        if body.len() > max_bytes {
            return Err(Poison::TooLarge { size: body.len(), limit: max_bytes });
        }
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| Poison::InvalidJson(e.to_string()))?;
        let serde_json::Value::Object(ref object) = value else {
            return Err(Poison::InvalidJson("the body is not a JSON object".into()));
        };
        let kind = match object.get("type") {
            None | Some(serde_json::Value::Null) => return Err(Poison::MissingField("type".into())),
            Some(serde_json::Value::String(kind)) => kind.clone(),
            Some(_) => return Err(Poison::InvalidField("`type` must be a string".into())),
        };
        let event = match kind.as_str() {
            "balance.changed" => Event::BalanceChanged(fields(value)?),
            "order.finalized" => Event::OrderFinalized(fields(value)?),
            "test" => Event::Test(fields(value)?),
            _ => return Err(Poison::UnknownType(kind)),
        };
        event.validate()?;
        Ok(event)
    }

    /// The `type` on the wire (also the routing key).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::BalanceChanged(_) => "balance.changed",
            Event::OrderFinalized(_) => "order.finalized",
            Event::Test(_) => "test",
        }
    }

    /// The event id.
    pub fn event_id(&self) -> Uuid {
        match self {
            Event::BalanceChanged(e) => e.event_id,
            Event::OrderFinalized(e) => e.event_id,
            Event::Test(e) => e.event_id,
        }
    }

    /// When the event happened at its source.
    pub fn occurred_at(&self) -> OffsetDateTime {
        match self {
            Event::BalanceChanged(e) => e.occurred_at,
            Event::OrderFinalized(e) => e.occurred_at,
            Event::Test(e) => e.occurred_at,
        }
    }

    fn validate(&self) -> Result<(), Poison> {
        match self {
            Event::BalanceChanged(e) => {
                non_empty("bank_id", &e.bank_id)?;
                non_empty("account_id", &e.account_id)?;
                non_empty("currency", &e.currency)?;
                Decimal::parse(&e.amount).ok_or_else(|| invalid_decimal("amount", &e.amount))?;
                Decimal::parse(&e.balance).ok_or_else(|| invalid_decimal("balance", &e.balance))?;
                Ok(())
            }
            Event::OrderFinalized(e) => {
                non_empty("merchant_id", &e.merchant_id)?;
                non_empty("order_id", &e.order_id)?;
                non_empty("status", &e.status)
            }
            Event::Test(e) => non_empty("merchant_id", &e.merchant_id),
        }
    }
}

impl BalanceChanged {
    /// The sign of the amount: the OBP triggers depend only on it.
    pub fn amount_sign(&self) -> std::cmp::Ordering {
        Decimal::parse(&self.amount).map_or(std::cmp::Ordering::Equal, |d| d.sign)
    }
}

/// Deserializes the fields of one event type, naming the field that is wrong.
fn fields<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, Poison> {
    serde_json::from_value(value).map_err(|e| {
        let text = e.to_string();
        match text.strip_prefix("missing field `") {
            Some(rest) => Poison::MissingField(rest.trim_end_matches('`').to_string()),
            None => Poison::InvalidField(text),
        }
    })
}

fn non_empty(field: &str, value: &str) -> Result<(), Poison> {
    if value.trim().is_empty() {
        return Err(Poison::InvalidField(format!("`{field}` must not be empty")));
    }
    Ok(())
}

fn invalid_decimal(field: &str, value: &str) -> Poison {
    Poison::InvalidField(format!("`{field}` must be a decimal string like \"-12.50\", got {value:?}"))
}

/// A decimal string as the core banking system writes it: `-?digits(.digits)?`.
///
/// We never compute with amounts, we only pass them through and read their sign, so a
/// validating parser is all that is needed.
struct Decimal {
    sign: std::cmp::Ordering,
}

impl Decimal {
    fn parse(text: &str) -> Option<Decimal> {
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, fraction) = match digits.split_once('.') {
            Some((w, f)) => (w, Some(f)),
            None => (digits, None),
        };
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(whole) || fraction.is_some_and(|f| !all_digits(f)) {
            return None;
        }
        let zero = whole.bytes().chain(fraction.unwrap_or("").bytes()).all(|b| b == b'0');
        let sign = match (zero, negative) {
            (true, _) => std::cmp::Ordering::Equal,
            (false, true) => std::cmp::Ordering::Less,
            (false, false) => std::cmp::Ordering::Greater,
        };
        Some(Decimal { sign })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering;

    const BALANCE: &str = r#"{"type":"balance.changed","event_id":"6f1c1f8e-3b8c-4a43-9d3c-0a8f6b1e2d11","occurred_at":"2026-11-24T10:00:00Z","bank_id":"gh.29.uk","account_id":"acc-1","amount":"-50.00","currency":"EUR","balance":"739.00"}"#;

    #[test]
    fn decodes_a_balance_change() {
        let Event::BalanceChanged(e) = Event::decode(BALANCE.as_bytes(), 4096).unwrap() else {
            panic!("wrong variant")
        };
        assert_eq!(e.bank_id, "gh.29.uk");
        assert_eq!(e.amount_sign(), Ordering::Less);
    }

    #[test]
    fn decodes_orders_and_tests() {
        let order = r#"{"type":"order.finalized","event_id":"6f1c1f8e-3b8c-4a43-9d3c-0a8f6b1e2d12","occurred_at":"2026-11-24T10:00:00+01:00","merchant_id":"m1","order_id":"o1","status":"COMPLETED","amount":{"total":1000,"paid":1000}}"#;
        let event = Event::decode(order.as_bytes(), 4096).unwrap();
        assert_eq!(event.kind(), "order.finalized");
        let test = r#"{"type":"test","event_id":"6f1c1f8e-3b8c-4a43-9d3c-0a8f6b1e2d13","occurred_at":"2026-11-24T10:00:00Z","merchant_id":"m1"}"#;
        assert_eq!(Event::decode(test.as_bytes(), 4096).unwrap().kind(), "test");
    }

    #[test]
    fn signs_of_amounts() {
        let sign = |s: &str| Decimal::parse(s).map(|d| d.sign);
        assert_eq!(sign("50.00"), Some(Ordering::Greater));
        assert_eq!(sign("-0.01"), Some(Ordering::Less));
        assert_eq!(sign("0"), Some(Ordering::Equal));
        assert_eq!(sign("-0.00"), Some(Ordering::Equal));
        for bad in ["", "-", "1.", ".5", "1e3", "+1", "1,00", "--1", " 1"] {
            assert!(sign(bad).is_none(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn poison_reasons_are_precise() {
        let reason = |body: &str| Event::decode(body.as_bytes(), 4096).unwrap_err();
        assert_eq!(reason("{not json").label(), "invalid_json");
        assert_eq!(reason("[1,2]").label(), "invalid_json");
        assert_eq!(reason(r#"{"type":"nope"}"#), Poison::UnknownType("nope".into()));
        assert_eq!(reason(r#"{"event_id":"x"}"#), Poison::MissingField("type".into()));
        let missing = BALANCE.replace(r#""currency":"EUR","#, "");
        assert_eq!(reason(&missing), Poison::MissingField("currency".into()));
        assert_eq!(reason(&BALANCE.replace("-50.00", "ten")).label(), "invalid_field");
        assert_eq!(reason(&BALANCE.replace("6f1c1f8e", "zzzz")).label(), "invalid_field");
        assert_eq!(reason(&BALANCE.replace("2026-11-24T10", "yesterday")).label(), "invalid_field");
        assert_eq!(reason(&BALANCE.replace("acc-1", "")).label(), "invalid_field");
        let big = Event::decode(BALANCE.as_bytes(), 10).unwrap_err();
        assert!(Poison::LABELS.contains(&big.label()));
        assert!(matches!(big, Poison::TooLarge { limit: 10, .. }));
        assert!(Event::decode(&[0xff, 0xfe, b'{'], 4096).is_err());
    }

    #[test]
    fn a_refusal_quotes_at_most_a_bounded_text() {
        let kind = "é".repeat(20_000);
        let body = format!(r#"{{"type":"{kind}","event_id":"x"}}"#);
        let refused = Event::decode(body.as_bytes(), 65_536).unwrap_err();
        assert_eq!(refused.label(), "unknown_type");
        let text = refused.to_string();
        assert!(text.len() <= Poison::MAX_DETAIL_BYTES + 40, "{} bytes", text.len());
        assert!(text.ends_with("...\""), "{text}");
    }
}
