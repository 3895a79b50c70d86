//! Identifier formats: Rabo subscription and event ids, and the delivery id.

use rand::Rng;
use uuid::Uuid;

const LOWER_ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Namespace of the delivery ids (UUID v5), fixed forever: changing it would break de-duplication
/// of redelivered AMQP messages across an upgrade.
const DELIVERY_NAMESPACE: Uuid = Uuid::from_u128(0x5b0e_4c1e_8f0a_4d7e_9a55_3c2b_1d0e_7f61);

/// A new Rabo subscription id: `wsb_` + 21 random lowercase alphanumerics.
pub fn new_subscription_id() -> String {
    let mut rng = rand::thread_rng();
    let tail: String = (0..21).map(|_| LOWER_ALNUM[rng.gen_range(0..LOWER_ALNUM.len())] as char).collect();
    format!("wsb_{tail}")
}

/// Whether a text has the shape of a Rabo subscription id.
pub fn is_subscription_id(text: &str) -> bool {
    text.strip_prefix("wsb_").is_some_and(|t| t.len() == 21 && t.bytes().all(|b| LOWER_ALNUM.contains(&b)))
}

/// The Rabo event id of an event: `ev_` + 21 base62 characters, derived from the event's UUID.
///
/// Derived, not random, so every delivery and retry of one event carries the same id. The
/// 122 bits of a UUID that are not version/variant fit in 21 base62 digits (62^21 > 2^122).
pub fn rabo_event_id(event_id: Uuid) -> String {
    let raw = event_id.as_u128();
    // Drop the 4 version bits (76..80) and the 2 variant bits (62..64).
    let high = raw >> 80;
    let mid = (raw >> 64) & 0xfff;
    let low = raw & ((1u128 << 62) - 1);
    let mut n = (high << 74) | (mid << 62) | low;
    let mut digits = [b'0'; 21];
    for slot in digits.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    format!("ev_{}", String::from_utf8_lossy(&digits))
}

/// The id of the one delivery of `event_id` to `subscription_id` for `trigger`.
///
/// Deterministic, so a redelivered AMQP message finds the delivery it already created.
pub fn delivery_id(event_id: Uuid, subscription_id: &str, trigger: &str) -> Uuid {
    let name = format!("{event_id}\n{subscription_id}\n{trigger}");
    Uuid::new_v5(&DELIVERY_NAMESPACE, name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_ids_have_the_rabo_shape() {
        let id = new_subscription_id();
        assert!(is_subscription_id(&id), "{id}");
        assert_ne!(id, new_subscription_id());
        assert!(!is_subscription_id("wsb_ABCDEFGHIJKLMNOPQRSTU"));
        assert!(!is_subscription_id("wsb_short"));
    }

    #[test]
    fn event_ids_are_stable_and_distinct() {
        let a = Uuid::new_v4();
        let b = Uuid::new_v4();
        assert_eq!(rabo_event_id(a), rabo_event_id(a));
        assert_ne!(rabo_event_id(a), rabo_event_id(b));
        let id = rabo_event_id(a);
        assert_eq!(id.len(), 24);
        assert!(id[3..].bytes().all(|c| c.is_ascii_alphanumeric()));
        let max = rabo_event_id(Uuid::from_u128(u128::MAX));
        assert_eq!(max.len(), 24);
    }

    #[test]
    fn delivery_ids_identify_event_subscription_and_trigger() {
        let e = Uuid::new_v4();
        assert_eq!(delivery_id(e, "s", "t"), delivery_id(e, "s", "t"));
        assert_ne!(delivery_id(e, "s", "t"), delivery_id(e, "s", "u"));
        assert_ne!(delivery_id(e, "s", "t"), delivery_id(e, "r", "t"));
    }
}
