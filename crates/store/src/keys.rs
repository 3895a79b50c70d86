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

/// Index entry of an event: `e`, then its id (one entry per event, not per delivery; its
/// value is a [`crate::deliveries::EventEntry`]).
pub fn event_key(event_id: &uuid::Uuid) -> Vec<u8> {
    let mut out = Vec::with_capacity(17);
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
    fn prefix_ends_skip_the_whole_prefix() {
        assert_eq!(prefix_end(&[1, 255]), Some(vec![2]));
        assert_eq!(prefix_end(&[255]), None);
    }
}
