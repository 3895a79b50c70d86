//! Byte layouts of the keys. Variable parts are length-prefixed so that a prefix scan for
//! `("a", "b")` can never also return `("a", "bc")`.

use webhookd_core::matching::MatchKey;

/// Appends a length-prefixed segment.
pub(crate) fn push_segment(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&bytes[..len as usize]);
}

/// The prefix under which all subscriptions matching `key` are indexed.
pub fn match_prefix(key: &MatchKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    match key {
        MatchKey::Obp { bank_id, account_id, trigger } => {
            out.push(b'o');
            push_segment(&mut out, bank_id.as_bytes());
            push_segment(&mut out, account_id.as_bytes());
            push_segment(&mut out, trigger.as_str().as_bytes());
        }
        MatchKey::Rabo { merchant_id, event_type } => {
            out.push(b'r');
            push_segment(&mut out, merchant_id.as_bytes());
            push_segment(&mut out, event_type.as_str().as_bytes());
        }
    }
    out
}

/// The index entry of one subscription under `key`.
pub fn match_entry(key: &MatchKey, subscription_id: &str) -> Vec<u8> {
    let mut out = match_prefix(key);
    push_segment(&mut out, subscription_id.as_bytes());
    out
}

/// The prefix of all due entries of a destination.
pub fn due_prefix(destination: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(destination.len() + 26);
    push_segment(&mut out, destination.as_bytes());
    out
}

/// A due entry: destination, due time (big-endian, so keys sort by time), delivery id.
pub fn due_entry(destination: &str, due_ms: u64, delivery_id: &uuid::Uuid) -> Vec<u8> {
    let mut out = due_prefix(destination);
    out.extend_from_slice(&due_ms.to_be_bytes());
    out.extend_from_slice(delivery_id.as_bytes());
    out
}

/// Splits a due entry into (destination, due ms, delivery id).
pub fn parse_due_entry(key: &[u8]) -> Option<(String, u64, uuid::Uuid)> {
    let len = u16::from_be_bytes([*key.first()?, *key.get(1)?]) as usize;
    let destination = std::str::from_utf8(key.get(2..2 + len)?).ok()?.to_string();
    let rest = key.get(2 + len..)?;
    if rest.len() != 24 {
        return None;
    }
    let due = u64::from_be_bytes(rest[..8].try_into().ok()?);
    let id = uuid::Uuid::from_slice(&rest[8..]).ok()?;
    Some((destination, due, id))
}

/// The first key after every key that starts with `prefix` (for skipping a whole prefix).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Index entry: a delivery of an event.
pub fn event_entry(event_id: &uuid::Uuid, delivery_id: &uuid::Uuid) -> Vec<u8> {
    let mut out = event_prefix(event_id);
    out.extend_from_slice(delivery_id.as_bytes());
    out
}

/// Prefix of all deliveries of an event.
pub fn event_prefix(event_id: &uuid::Uuid) -> Vec<u8> {
    let mut out = Vec::with_capacity(33);
    out.push(b'e');
    out.extend_from_slice(event_id.as_bytes());
    out
}

/// Index entry: a delivery of a subscription, in creation order.
pub fn subscription_entry(subscription_id: &str, created_ms: u64, delivery_id: &uuid::Uuid) -> Vec<u8> {
    let mut out = subscription_prefix(subscription_id);
    out.extend_from_slice(&created_ms.to_be_bytes());
    out.extend_from_slice(delivery_id.as_bytes());
    out
}

/// Prefix of all deliveries of a subscription.
pub fn subscription_prefix(subscription_id: &str) -> Vec<u8> {
    let mut out = vec![b's'];
    push_segment(&mut out, subscription_id.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use webhookd_core::subscription::RaboEventType;

    #[test]
    fn prefixes_do_not_overlap_longer_values() {
        let a = MatchKey::Rabo { merchant_id: "m".into(), event_type: RaboEventType::Test };
        let b = MatchKey::Rabo { merchant_id: "mm".into(), event_type: RaboEventType::Test };
        assert!(!match_entry(&b, "x").starts_with(&match_prefix(&a)));
        assert!(match_entry(&a, "x").starts_with(&match_prefix(&a)));
    }

    #[test]
    fn due_entries_round_trip_and_sort_by_time() {
        let id = uuid::Uuid::new_v4();
        let k = due_entry("h:1", 42, &id);
        assert_eq!(parse_due_entry(&k), Some(("h:1".into(), 42, id)));
        assert!(due_entry("h:1", 41, &id) < k && k < due_entry("h:1", 300, &id));
        assert_eq!(parse_due_entry(b"\x00"), None);
        assert_eq!(prefix_end(&[1, 255]), Some(vec![2]));
        assert_eq!(prefix_end(&[255]), None);
    }
}
