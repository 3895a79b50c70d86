//! Changes to the subscription catalog, as they travel through the catalog log.
//!
//! Every replica applies the same records in the same order, so applying one must be a pure
//! function of the current state and the record: no local clock (times travel in the record),
//! no local configuration (limits travel in the change). A change says what to change, field by
//! field, never "replace with what I read": two replicas patching different fields of one
//! subscription at once must both take effect.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::TokenRecord;
use crate::subscription::{Api, RaboEventType, RaboStatus, Subscription};

/// The version of [`CatalogRecord`]'s layout; a replica refuses records of a newer one.
pub const RECORD_VERSION: u32 = 1;

/// One change to the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    /// Create a subscription; refused if the id exists or its owner already has `max_per_owner`.
    Create {
        /// The new subscription, its id and creation time chosen by the replica that took the request.
        subscription: Subscription,
        /// The most subscriptions its owner (bank or merchant) may have, if limited.
        max_per_owner: Option<u32>,
        /// The idempotency key the request came with: a key already used answers with its
        /// first outcome instead of creating (the same request) or is refused (another request).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency: Option<IdempotencyClaim>,
    },
    /// Create or replace a subscription by its id (bulk loads and tests; the APIs patch).
    Put {
        /// The subscription as it is to be.
        subscription: Subscription,
    },
    /// Change some fields of an existing subscription; refused if it does not exist or has
    /// another owner (a patch never brings a deleted subscription back).
    Patch {
        /// Which subscription.
        id: String,
        /// Whose it must be, when the caller acts for one owner.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<Owner>,
        /// The fields to change.
        patch: SubscriptionPatch,
    },
    /// Delete a subscription; refused if it does not exist or has another owner.
    Delete {
        /// Which subscription.
        id: String,
        /// Whose it must be, when the caller acts for one owner.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<Owner>,
    },
    /// Add an API token (its hash only); refused if its id exists.
    AddToken {
        /// The token record.
        token: TokenRecord,
    },
    /// Revoke a token as of the record's log time; refused if there is no such token. A revoked
    /// token keeps its first revocation time.
    RevokeToken {
        /// Which token (`tok_...`).
        id: String,
    },
    /// One part of a snapshot of the whole catalog: changes nothing for a replica that applies
    /// it (it has the state already); a new replica starts from a complete one.
    SnapshotPart(SnapshotPart),
    /// Changes nothing: once a replica has applied it, it has applied everything appended
    /// before it (a replica starts taking events only after its own barrier).
    Barrier,
}

/// Who a subscription belongs to: a bank (OBP) or a merchant (Rabo).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    /// The API.
    pub api: Api,
    /// The bank id (OBP) or merchant id (Rabo).
    pub id: String,
}

impl Owner {
    /// The owner of `subscription`.
    pub fn of(subscription: &Subscription) -> Owner {
        match subscription {
            Subscription::Obp(w) => Owner { api: Api::Obp, id: w.bank_id.clone() },
            Subscription::Rabo(s) => Owner { api: Api::Rabo, id: s.merchant_id.clone() },
        }
    }
}

impl Change {
    /// The id of the subscription it changes, if it changes one.
    pub fn subscription_id(&self) -> Option<String> {
        match self {
            Change::Create { subscription, .. } | Change::Put { subscription } => Some(subscription.id()),
            Change::Patch { id, .. } | Change::Delete { id, .. } => Some(id.clone()),
            Change::AddToken { .. }
            | Change::RevokeToken { .. }
            | Change::SnapshotPart(_)
            | Change::Barrier => None,
        }
    }
}

/// One part of a snapshot: the catalog as it was right after the record at `of_offset` was
/// applied, split into parts that each stay well under RabbitMQ's message size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotPart {
    /// Names the snapshot (its parts share it).
    pub id: Uuid,
    /// The life of the log the snapshot belongs to.
    pub epoch: Uuid,
    /// The offset of the last record the snapshot holds.
    pub of_offset: u64,
    /// The change id of that record (a replica resuming there checks it).
    pub of_change_id: Uuid,
    /// How many catalog changes the log held up to that record.
    pub changes: u64,
    /// This part's number, from 0.
    pub part: u32,
    /// How many parts there are.
    pub parts: u32,
    /// SHA-256 of the whole snapshot's bytes, lowercase hex.
    pub sha256: String,
    /// This part's bytes, base64 (standard alphabet).
    pub data: String,
}

/// An idempotency key as a create carries it through the log. Only a digest of the request
/// travels, enough to tell a repeat from another request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyClaim {
    /// Whose key it is (keys of different callers never meet).
    pub scope: String,
    /// The key as the client sent it.
    pub key: String,
    /// SHA-256 of the canonical request, lowercase hex.
    pub request_sha256: String,
    /// How long the key is remembered after its first use, milliseconds of log time.
    pub ttl_ms: u64,
}

impl IdempotencyClaim {
    /// A claim of `key` in `scope` for the request whose canonical form is `request`.
    pub fn new(scope: &str, key: &str, request: &str, ttl_ms: u64) -> IdempotencyClaim {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(request.as_bytes());
        IdempotencyClaim {
            scope: scope.to_string(),
            key: key.to_string(),
            request_sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
            ttl_ms,
        }
    }
}

/// What the first create with an idempotency key did; a repeat of the same request is answered
/// with it, on every replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FirstOutcome {
    /// It created this subscription (as it was then).
    Created {
        /// The subscription as created.
        subscription: Subscription,
    },
    /// Its owner had reached this limit.
    LimitReached {
        /// The limit.
        limit: u32,
    },
}

/// The fields a patch changes; `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionPatch {
    /// Active (OBP `is_active`, Rabo `status` enabled) or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    /// Where new deliveries go (Rabo only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The description echoed in envelopes (Rabo only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The event types it receives (Rabo only; never empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_types: Option<Vec<RaboEventType>>,
}

/// Why a patch does not apply to a subscription.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The field does not exist in the subscription's API.
    #[error("an OBP account webhook has no field '{0}'")]
    NoSuchField(&'static str),
    /// A Rabo subscription receives at least one event type.
    #[error("event_types must not be empty")]
    NoEventTypes,
}

impl SubscriptionPatch {
    /// Only the active flag.
    pub fn active(active: bool) -> SubscriptionPatch {
        SubscriptionPatch { active: Some(active), ..SubscriptionPatch::default() }
    }

    /// The subscription with this patch's fields changed.
    pub fn applied_to(&self, subscription: &Subscription) -> Result<Subscription, PatchError> {
        let mut out = subscription.clone();
        match &mut out {
            Subscription::Obp(w) => {
                for (name, present) in [
                    ("url", self.url.is_some()),
                    ("description", self.description.is_some()),
                    ("event_types", self.event_types.is_some()),
                ] {
                    if present {
                        return Err(PatchError::NoSuchField(name));
                    }
                }
                if let Some(active) = self.active {
                    w.is_active = active;
                }
            }
            Subscription::Rabo(s) => {
                if let Some(active) = self.active {
                    s.status = if active { RaboStatus::Enabled } else { RaboStatus::Disabled };
                }
                if let Some(url) = &self.url {
                    s.url = url.clone();
                }
                if let Some(description) = &self.description {
                    s.description = Some(description.clone());
                }
                if let Some(types) = &self.event_types {
                    if types.is_empty() {
                        return Err(PatchError::NoEventTypes);
                    }
                    s.event_types = types.clone();
                }
            }
        }
        Ok(out)
    }
}

/// A change as written to the catalog log: who proposed it (its id, to find the outcome) and
/// in which life of the log (the epoch, to notice a log deleted and created again).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogRecord {
    /// The layout version ([`RECORD_VERSION`]).
    pub v: u32,
    /// Unique per proposed change: the proposer waits until its replica has applied this id.
    pub change_id: Uuid,
    /// The life of the log this record belongs to.
    pub epoch: Uuid,
    /// The proposer's time, unix milliseconds: the only clock apply may use.
    pub log_time_ms: u64,
    /// The change.
    pub change: Change,
}

/// Why a catalog record cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The bytes are not a record of any known kind.
    #[error("catalog record does not decode: {0}")]
    Malformed(#[from] serde_json::Error),
    /// Written by a newer webhookd.
    #[error("catalog record version {0} is newer than this webhookd understands ({RECORD_VERSION})")]
    Version(u32),
}

impl CatalogRecord {
    /// A new record of `change` in `epoch`, proposed at `log_time_ms`.
    pub fn new(epoch: Uuid, log_time_ms: u64, change: Change) -> CatalogRecord {
        CatalogRecord { v: RECORD_VERSION, change_id: Uuid::new_v4(), epoch, log_time_ms, change }
    }

    /// The record as the log carries it (JSON).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a catalog record always serializes")
    }

    /// Reads a record; unknown kinds, unknown fields and newer versions are errors, never skipped.
    pub fn decode(bytes: &[u8]) -> Result<CatalogRecord, RecordError> {
        #[derive(Deserialize)]
        struct Version {
            v: u32,
        }
        let Version { v } = serde_json::from_slice(bytes)?;
        if v > RECORD_VERSION {
            return Err(RecordError::Version(v));
        }
        Ok(serde_json::from_slice(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscription::{ObpWebhook, RaboSubscription, Trigger};

    fn rabo() -> Subscription {
        Subscription::Rabo(RaboSubscription {
            id: "wsb_aaaaaaaaaaaaaaaaaaaaa".into(),
            merchant_id: "m-1".into(),
            status: RaboStatus::Enabled,
            url: "https://a.example/hook".into(),
            description: None,
            event_types: vec![RaboEventType::OrderFinalized],
            created_at_ms: 1,
        })
    }

    fn obp() -> Subscription {
        Subscription::Obp(ObpWebhook {
            account_webhook_id: Uuid::nil(),
            bank_id: "b".into(),
            account_id: "a".into(),
            trigger: Trigger::OnBalanceChange,
            url: "https://a.example/obp".into(),
            http_method: "POST".into(),
            http_protocol: "HTTP/1.1".into(),
            created_by_user_id: "u".into(),
            is_active: true,
            created_at_ms: 1,
        })
    }

    #[test]
    fn patches_of_different_fields_both_take_effect_in_either_order() {
        let url = SubscriptionPatch { url: Some("https://b.example/new".into()), ..Default::default() };
        let off = SubscriptionPatch::active(false);
        let one = off.applied_to(&url.applied_to(&rabo()).unwrap()).unwrap();
        let other = url.applied_to(&off.applied_to(&rabo()).unwrap()).unwrap();
        assert_eq!(one, other);
        let Subscription::Rabo(s) = one else { unreachable!() };
        assert_eq!((s.url.as_str(), s.status), ("https://b.example/new", RaboStatus::Disabled));
        assert_eq!(s.event_types, vec![RaboEventType::OrderFinalized], "untouched fields stay");
    }

    #[test]
    fn a_patch_refuses_fields_the_api_does_not_have_and_empty_event_types() {
        let url = SubscriptionPatch { url: Some("https://b.example/".into()), ..Default::default() };
        assert_eq!(url.applied_to(&obp()), Err(PatchError::NoSuchField("url")));
        let Subscription::Obp(w) = SubscriptionPatch::active(false).applied_to(&obp()).unwrap() else {
            unreachable!()
        };
        assert!(!w.is_active);
        let empty = SubscriptionPatch { event_types: Some(vec![]), ..Default::default() };
        assert_eq!(empty.applied_to(&rabo()), Err(PatchError::NoEventTypes));
    }

    #[test]
    fn records_round_trip_and_unknown_or_newer_ones_are_errors() {
        let record = CatalogRecord::new(
            Uuid::new_v4(),
            42,
            Change::Patch {
                id: "wsb_x".into(),
                owner: Some(Owner { api: Api::Rabo, id: "m-1".into() }),
                patch: SubscriptionPatch::active(true),
            },
        );
        assert_eq!(CatalogRecord::decode(&record.encode()).unwrap(), record);

        let mut value: serde_json::Value = serde_json::from_slice(&record.encode()).unwrap();
        value["change"]["kind"] = "rename".into();
        let unknown = serde_json::to_vec(&value).unwrap();
        assert!(matches!(CatalogRecord::decode(&unknown), Err(RecordError::Malformed(_))));

        value["change"]["kind"] = "patch".into();
        value["change"]["colour"] = "red".into();
        let extra = serde_json::to_vec(&value).unwrap();
        assert!(matches!(CatalogRecord::decode(&extra), Err(RecordError::Malformed(_))));

        let mut newer: serde_json::Value = serde_json::from_slice(&record.encode()).unwrap();
        newer["v"] = (RECORD_VERSION + 1).into();
        assert!(matches!(
            CatalogRecord::decode(&serde_json::to_vec(&newer).unwrap()),
            Err(RecordError::Version(v)) if v == RECORD_VERSION + 1
        ));
        assert!(CatalogRecord::decode(b"{not json").is_err());
    }
}
