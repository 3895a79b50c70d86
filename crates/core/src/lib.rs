//! The domain model of webhookd: everything that is decided, nothing that does I/O.
//!
//! An event from the core banking system ([`event`]) fans out to match keys ([`matching`]); each
//! subscription found under a key ([`subscription`]) gets one delivery ([`delivery`]) whose body and
//! headers are rendered once ([`payload`]) and signed at every attempt ([`signing`]). The outcome
//! of an attempt is classified by the rules of the subscription's API ([`outcome`]) and, when it is
//! retryable, the next attempt is placed by a pure schedule ([`retry`]) read against one
//! [`clock::Clock`] that the replay harness can speed up.
//!
//! # Layout
//! - [`event`]: the event contract on the wire and its validation (poison reasons).
//! - [`subscription`]: OBP account webhooks and Rabo Smart Pay subscriptions.
//! - [`catalog`]: changes to the subscriptions as the catalog log carries them (field-level patches).
//! - [`matching`]: which index keys an event fires.
//! - [`payload`]: the exact bytes each API delivers.
//! - [`signing`]: Standard Webhooks Ed25519 and detached JWS (ES256) signatures, the JWKS.
//! - [`retry`]: the durable retry schedule.
//! - [`tiers`]: the broker's retry tiers a wait is rounded up to.
//! - [`outcome`]: what an HTTP answer means for a delivery.
//! - [`delivery`]: a delivery, its attempts, and the retry message that carries it.
//! - [`delivery_log`]: the delivery log's record format (the stream every replica folds).
//! - [`clock`]: wall time with an optional time scale.
//! - [`ids`]: identifier formats.
//! - [`destination`]: which urls and addresses webhookd may send to (SSRF protection).
//! - [`auth`]: role grants, callers, bearer tokens (minted, hashed, compared in constant time).

pub mod auth;
pub mod catalog;
pub mod clock;
pub mod delivery;
pub mod delivery_log;
pub mod destination;
pub mod event;
pub mod ids;
pub mod matching;
pub mod outcome;
pub mod payload;
pub mod retry;
pub mod signing;
pub mod subscription;
pub mod tiers;
