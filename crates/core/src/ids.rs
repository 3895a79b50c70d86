//! Identifier formats: Rabo subscription and event ids, and the delivery id.

use rand::Rng;
use uuid::Uuid;

const LOWER_ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Hashed into every delivery id, fixed forever: changing it would break de-duplication of
/// redelivered AMQP messages across an upgrade.
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

/// The event UUIDs whose Rabo event id is `text` (`ev_` + 21 base62 characters), or `None`
/// when it is not one. The Rabo id leaves out a UUID's version and variant bits, so one stands
/// for 64 UUIDs (one per version and variant); at most one of them is usually an event.
pub fn event_ids_of_rabo(text: &str) -> Option<Vec<Uuid>> {
    let digits = text.strip_prefix("ev_")?;
    if digits.len() != 21 {
        return None;
    }
    let mut n: u128 = 0;
    for b in digits.bytes() {
        let digit = BASE62.iter().position(|&c| c == b)? as u128;
        n = n.checked_mul(62)?.checked_add(digit)?;
    }
    if n >> 122 != 0 {
        return None;
    }
    let (high, mid, low) = (n >> 74, (n >> 62) & 0xfff, n & ((1u128 << 62) - 1));
    let mut ids = Vec::with_capacity(64);
    for version in 0..16u128 {
        for variant in 0..4u128 {
            ids.push(Uuid::from_u128((high << 80) | (version << 76) | (mid << 64) | (variant << 62) | low));
        }
    }
    Some(ids)
}

/// The id of the one delivery of the event `event_id`, which occurred at `occurred_at_ms` (unix
/// milliseconds), to `subscription_id` for `trigger`.
///
/// Deterministic, so a redelivered AMQP message finds the delivery it already created. A UUID
/// v8 laid out like a v7: the first 48 bits are the event's time, the other 74 a SHA-256 hash
/// of the event id, subscription and trigger. Ids, and so the delivery log view's keys, follow
/// event time: the view writes where it wrote last, and retention removes from one end.
pub fn delivery_id(event_id: Uuid, occurred_at_ms: i64, subscription_id: &str, trigger: &str) -> Uuid {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(DELIVERY_NAMESPACE.as_bytes());
    hash.update(format!("{event_id}\n{subscription_id}\n{trigger}").as_bytes());
    let digest = hash.finalize();
    // A time before 1970 or past the year 10889 is kept at the nearer end.
    let ms = occurred_at_ms.clamp(0, (1 << 48) - 1) as u64;
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6..].copy_from_slice(&digest[..10]);
    Uuid::new_v8(bytes)
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
    fn a_rabo_event_id_leads_back_to_its_event() {
        for event in [Uuid::new_v4(), Uuid::now_v7(), Uuid::from_u128(0), Uuid::from_u128(u128::MAX)] {
            let text = rabo_event_id(event);
            let candidates = event_ids_of_rabo(&text).unwrap();
            assert_eq!(candidates.len(), 64);
            assert!(candidates.contains(&event), "{text} -> {event}");
            assert!(candidates.iter().all(|c| rabo_event_id(*c) == text));
        }
        for bad in [
            "",
            "ev_",
            "ev_123",
            "ev_0000000000000000000!0",
            "wsb_000000000000000000000",
            "ev_zzzzzzzzzzzzzzzzzzzzz",
        ] {
            assert_eq!(event_ids_of_rabo(bad), None, "{bad}");
        }
    }

    #[test]
    fn delivery_ids_identify_event_subscription_and_trigger() {
        let e = Uuid::new_v4();
        assert_eq!(delivery_id(e, 7, "s", "t"), delivery_id(e, 7, "s", "t"));
        assert_ne!(delivery_id(e, 7, "s", "t"), delivery_id(e, 7, "s", "u"));
        assert_ne!(delivery_id(e, 7, "s", "t"), delivery_id(e, 7, "r", "t"));
        assert_ne!(delivery_id(e, 7, "s", "t"), delivery_id(Uuid::new_v4(), 7, "s", "t"));
        assert_eq!(delivery_id(e, 7, "s", "t").get_version_num(), 8);
    }

    #[test]
    fn delivery_ids_sort_by_event_time() {
        let at = 1_765_000_000_000i64;
        let ids: Vec<Uuid> = (0..100).map(|i| delivery_id(Uuid::new_v4(), at + i, "s", "t")).collect();
        assert!(ids.windows(2).all(|w| w[0].as_bytes() < w[1].as_bytes()), "{ids:?}");
        // The time is the id's first 48 bits; a time before 1970 is kept at 0.
        let id = delivery_id(Uuid::new_v4(), at, "s", "t");
        assert_eq!(id.as_bytes()[..6], at.to_be_bytes()[2..]);
        assert_eq!(delivery_id(Uuid::new_v4(), -5, "s", "t").as_bytes()[..6], [0; 6]);
    }
}
