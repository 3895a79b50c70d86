//! Idempotency keys: the first response to a request is stored and replayed for repeats.
//!
//! A record is created (in progress) by the first request and completed with its response. A
//! repeat while in progress is told so (the API answers 409); a repeat with a different request
//! is told so (422); a repeat after completion gets the stored response. Records expire after
//! the configured time; an in-progress record whose request never completed (the process died)
//! is taken over after `abandon_ms`.

use serde::{Deserialize, Serialize};

use crate::{decode, encode, keys::push_segment, Result, Store};

/// A stored HTTP response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    /// Status code.
    pub status: u16,
    /// Headers to replay (lowercase names).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// What a request with an idempotency key should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Begin {
    /// First use of the key: handle the request, creating what it creates under `resource_id`,
    /// then [`Store::idempotency_complete`]. A request that takes over an abandoned first
    /// attempt gets that attempt's id, so a create that did complete is found, not repeated.
    Fresh {
        /// The id the request's resource must get.
        resource_id: String,
    },
    /// The first request with this key is still running.
    InProgress,
    /// The key was used with a different request.
    Mismatch,
    /// The first request completed: replay this.
    Replay(StoredResponse),
}

/// The clock of an idempotency decision.
#[derive(Clone, Copy, Debug)]
pub struct Times {
    /// Now, unix milliseconds.
    pub now_ms: u64,
    /// How long a key is remembered.
    pub ttl_ms: u64,
    /// After how long an unfinished first request counts as dead.
    pub abandon_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct Record {
    request: String,
    started_ms: u64,
    response: Option<StoredResponse>,
    #[serde(default)]
    resource_id: String,
}

fn record_key(scope: &str, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(scope.len() + key.len() + 4);
    push_segment(&mut out, scope.as_bytes());
    push_segment(&mut out, key.as_bytes());
    out
}

impl Store {
    /// Starts a request with an idempotency key, atomically.
    ///
    /// `request` is a canonical form of the request (equal requests give equal text).
    pub fn idempotency_begin(
        &self,
        scope: &str,
        key: &str,
        request: &str,
        times: Times,
        new_resource_id: &str,
    ) -> Result<Begin> {
        let Times { now_ms, ttl_ms, abandon_ms } = times;
        let id = record_key(scope, key);
        loop {
            let current = self.idempotency.get(&id)?;
            let mut resource_id = new_resource_id.to_string();
            if let Some(bytes) = &current {
                let record: Record = decode(&id, bytes)?;
                let expired = record.started_ms.saturating_add(ttl_ms) <= now_ms;
                let abandoned =
                    record.response.is_none() && record.started_ms.saturating_add(abandon_ms) <= now_ms;
                if abandoned && !expired && record.request == request && !record.resource_id.is_empty() {
                    resource_id = record.resource_id.clone();
                }
                if !expired && !abandoned {
                    return Ok(if record.request != request {
                        Begin::Mismatch
                    } else {
                        match record.response {
                            Some(response) => Begin::Replay(response),
                            None => Begin::InProgress,
                        }
                    });
                }
            }
            let fresh = encode(&Record {
                request: request.to_string(),
                started_ms: now_ms,
                response: None,
                resource_id: resource_id.clone(),
            });
            if self.idempotency.compare_and_swap(&id, current, Some(fresh))?.is_ok() {
                return Ok(Begin::Fresh { resource_id });
            }
            // Another request raced us to the key: look again.
        }
    }

    /// Stores the response of the first request and makes it durable.
    pub async fn idempotency_complete(&self, scope: &str, key: &str, response: StoredResponse) -> Result<()> {
        let id = record_key(scope, key);
        if let Some(bytes) = self.idempotency.get(&id)? {
            let mut record: Record = decode(&id, &bytes)?;
            record.response = Some(response);
            self.idempotency.insert(id, encode(&record))?;
            self.flush().await?;
        }
        Ok(())
    }

    /// Forgets a key whose first request failed in a way that should not be replayed.
    pub fn idempotency_abandon(&self, scope: &str, key: &str) -> Result<()> {
        self.idempotency.remove(record_key(scope, key))?;
        Ok(())
    }

    /// Removes expired records; returns how many.
    pub fn prune_idempotency(&self, now_ms: u64, ttl_ms: u64) -> Result<usize> {
        let mut removed = 0;
        for item in self.idempotency.iter() {
            let (key, bytes) = item?;
            let expired = decode::<Record>(&key, &bytes)
                .map(|r| r.started_ms.saturating_add(ttl_ms) <= now_ms)
                .unwrap_or(true);
            if expired {
                self.idempotency.remove(key)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
