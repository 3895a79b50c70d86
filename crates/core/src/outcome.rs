//! What the answer to one attempt means for its delivery, by the rules of its API.
//!
//! Kept apart from the transport so the rules are unit-tested without I/O.

use crate::subscription::Api;

/// What came back from one attempt.
#[derive(Clone, Copy, Debug)]
pub enum Answer<'a> {
    /// The receiver answered with a status and (a bounded prefix of) a body.
    Status {
        /// HTTP status code.
        code: u16,
        /// Response body (possibly truncated).
        body: &'a [u8],
    },
    /// Timeout, connection refused or reset, TLS failure, refused destination: no answer.
    NoAnswer,
}

/// The verdict on an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Acknowledged: the delivery is done.
    Delivered,
    /// Failed in a way that may pass later: retry on schedule.
    Retry,
    /// The receiver is misconfigured: stop, do not retry.
    Misconfigured,
}

/// Classifies an answer.
///
/// Rabo: success is 200 with the body exactly `ack`; 1xx, 200 without `ack`, 201-299 and 3xx
/// mean the subscription is misconfigured; 4xx, 5xx and no answer are retried.
/// OBP (ours, OBP itself never retries): any 2xx is success; 1xx and 3xx are misconfigured
/// (redirects are never followed); everything else is retried.
pub fn classify(api: Api, answer: Answer<'_>) -> Verdict {
    let Answer::Status { code, body } = answer else {
        return Verdict::Retry;
    };
    match (api, code) {
        (Api::Rabo, 200) if body == b"ack" => Verdict::Delivered,
        (Api::Rabo, 100..=399) => Verdict::Misconfigured,
        (Api::Obp, 200..=299) => Verdict::Delivered,
        (Api::Obp, 100..=199 | 300..=399) => Verdict::Misconfigured,
        _ => Verdict::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rabo(code: u16, body: &str) -> Verdict {
        classify(Api::Rabo, Answer::Status { code, body: body.as_bytes() })
    }

    fn obp(code: u16) -> Verdict {
        classify(Api::Obp, Answer::Status { code, body: b"" })
    }

    #[test]
    fn rabo_rules() {
        assert_eq!(rabo(200, "ack"), Verdict::Delivered);
        assert_eq!(rabo(200, "ack\n"), Verdict::Misconfigured);
        assert_eq!(rabo(200, "ok"), Verdict::Misconfigured);
        assert_eq!(rabo(200, ""), Verdict::Misconfigured);
        assert_eq!(rabo(204, "ack"), Verdict::Misconfigured);
        assert_eq!(rabo(101, ""), Verdict::Misconfigured);
        assert_eq!(rabo(302, ""), Verdict::Misconfigured);
        assert_eq!(rabo(404, "ack"), Verdict::Retry);
        assert_eq!(rabo(503, ""), Verdict::Retry);
        assert_eq!(classify(Api::Rabo, Answer::NoAnswer), Verdict::Retry);
    }

    #[test]
    fn obp_rules() {
        assert_eq!(obp(200), Verdict::Delivered);
        assert_eq!(obp(204), Verdict::Delivered);
        assert_eq!(obp(301), Verdict::Misconfigured);
        assert_eq!(obp(100), Verdict::Misconfigured);
        assert_eq!(obp(400), Verdict::Retry);
        assert_eq!(obp(500), Verdict::Retry);
        assert_eq!(obp(600), Verdict::Retry);
        assert_eq!(classify(Api::Obp, Answer::NoAnswer), Verdict::Retry);
    }
}
