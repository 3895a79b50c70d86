//! Which index keys an event fires: the fan-out rules of both APIs.

use std::cmp::Ordering;

use crate::event::Event;
use crate::subscription::{RaboEventType, Trigger};

/// One key of a match index; every active subscription under it receives the event.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MatchKey {
    /// OBP: (bank, account, trigger).
    Obp {
        /// Bank id.
        bank_id: String,
        /// Account id.
        account_id: String,
        /// Trigger fired.
        trigger: Trigger,
    },
    /// Rabo: (merchant, event type).
    Rabo {
        /// Merchant id.
        merchant_id: String,
        /// Event type.
        event_type: RaboEventType,
    },
}

impl MatchKey {
    /// The trigger or event type name, which together with the event and subscription
    /// identifies one delivery.
    pub fn trigger_name(&self) -> &'static str {
        match self {
            MatchKey::Obp { trigger, .. } => trigger.as_str(),
            MatchKey::Rabo { event_type, .. } => event_type.as_str(),
        }
    }
}

/// The keys an event fires, as OBP and Rabo do.
///
/// A balance change fires `OnBalanceChange` plus `OnCreditTransaction` (amount > 0) or
/// `OnDebitTransaction` (amount < 0); an amount of zero fires nothing, exactly like OBP.
pub fn match_keys(event: &Event) -> Vec<MatchKey> {
    match event {
        Event::BalanceChanged(e) => {
            let second = match e.amount_sign() {
                Ordering::Greater => Trigger::OnCreditTransaction,
                Ordering::Less => Trigger::OnDebitTransaction,
                Ordering::Equal => return Vec::new(),
            };
            [Trigger::OnBalanceChange, second]
                .into_iter()
                .map(|trigger| MatchKey::Obp {
                    bank_id: e.bank_id.clone(),
                    account_id: e.account_id.clone(),
                    trigger,
                })
                .collect()
        }
        Event::OrderFinalized(e) => vec![MatchKey::Rabo {
            merchant_id: e.merchant_id.clone(),
            event_type: RaboEventType::OrderFinalized,
        }],
        Event::Test(e) => {
            vec![MatchKey::Rabo { merchant_id: e.merchant_id.clone(), event_type: RaboEventType::Test }]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balance(amount: &str) -> Event {
        let body = format!(
            r#"{{"type":"balance.changed","event_id":"6f1c1f8e-3b8c-4a43-9d3c-0a8f6b1e2d11","occurred_at":"2026-11-24T10:00:00Z","bank_id":"b","account_id":"a","amount":"{amount}","currency":"EUR","balance":"1.00"}}"#
        );
        Event::decode(body.as_bytes(), 4096).unwrap()
    }

    fn triggers(event: &Event) -> Vec<&'static str> {
        match_keys(event).iter().map(MatchKey::trigger_name).collect()
    }

    #[test]
    fn obp_triggers_follow_the_sign_of_the_amount() {
        assert_eq!(triggers(&balance("12.00")), ["OnBalanceChange", "OnCreditTransaction"]);
        assert_eq!(triggers(&balance("-0.01")), ["OnBalanceChange", "OnDebitTransaction"]);
        assert!(triggers(&balance("0.00")).is_empty());
    }
}
