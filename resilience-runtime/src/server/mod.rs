//! The server half of the idempotency contract: a tower layer that runs a keyed request's
//! handler once and replays its response to every repeat.
//!
//! A client may retry a POST after an ambiguous failure (timeout, reset) only if the server
//! turns the repeat into a replay. [`IdempotencyLayer`] does that for any tower service over
//! `http` types, axum routers included:
//!
//! ```
//! use axum::{Router, http::StatusCode, routing::post};
//! use resilience_runtime::server::{IdempotencyLayer, MemoryStore};
//!
//! async fn charge(order: String) -> (StatusCode, String) {
//!     (StatusCode::CREATED, format!("charged for {order}"))
//! }
//!
//! let app: Router = Router::new()
//!     .route("/charges", post(charge))
//!     .layer(IdempotencyLayer::new(MemoryStore::default()).require_key(true));
//! ```
//!
//! # The rules
//!
//! A request is *covered* when its method is one of [`IdempotencyLayer::methods`] (POST and
//! PATCH by default). Other requests pass through untouched. A covered request is identified by
//! (`Idempotency-Key`, method, path), optionally [scoped](IdempotencyLayer::scope) per tenant;
//! its *fingerprint* is the SHA-256 of its query string and body.
//!
//! | request | answer | handler runs |
//! |---|---|---|
//! | no key, key optional | the handler's | yes, unprotected |
//! | no key, [`require_key(true)`](IdempotencyLayer::require_key) | 400 | no |
//! | key empty, longer than 255 bytes, not visible ASCII, or sent twice | 400 | no |
//! | body over [`max_body`](IdempotencyLayer::max_body) | 413 | no |
//! | first with this key | the handler's; stored unless 5xx, 408 or 429 | yes |
//! | repeat, same fingerprint, first completed | stored status, headers and body, plus `Idempotent-Replayed: true` | no |
//! | repeat, other fingerprint | 422 | no |
//! | repeat, same fingerprint, first still running | 409 with `Retry-After: 1` | no |
//! | the store fails | 503 with `Retry-After: 1` | no |
//!
//! Error answers are short `application/problem+json` bodies (RFC 9457) saying what to fix.
//!
//! # Decisions
//!
//! - **One run, then replay.** The first request atomically *claims* the key in the store; of
//!   any number of concurrent requests with one key, exactly one wins the claim and runs the
//!   handler. The others get 409 at once rather than waiting: a client that retries on a timeout
//!   learns the first attempt is still running, and its next retry (after `Retry-After`) gets
//!   the replay.
//! - **A reused key is 422, even while the first request runs**: the body differs, so no
//!   answer to the first request is an answer to this one.
//! - **Transient answers are not stored.** On 5xx, 408 and 429 (see [`default_replayable`],
//!   configurable with [`IdempotencyLayer::replayable`]), on a service error, and when the
//!   handler's response body fails, the claim is released, so a retry with the same key runs
//!   the handler again. This assumes the usual contract of such answers: a handler that fails
//!   with 5xx left no effect behind (one transaction). Every other status, 4xx included, is
//!   the answer to that request and is replayed.
//! - **Claims cannot stay stuck.** A claim has a lease (10 s by default), renewed every third
//!   of it while the handler runs. When the request future is dropped mid-handler (the client
//!   went away, the handler panicked), the claim is released at once; if the whole instance
//!   dies, the claim frees up when its lease runs out. A released or expired claim lets a
//!   retry run the handler again, so a handler that may be cancelled half-way should make its
//!   effects atomic.
//! - **Responses are kept for the TTL** (24 h by default): status, headers (minus connection
//!   headers and `Content-Length`) and the whole body, which is buffered. Request bodies of
//!   covered requests are buffered too (2 MiB limit by default) to be fingerprinted.
//! - **Fail closed.** If the store cannot be reached, covered requests with a key get 503; the
//!   handler never runs without a claim.
//!
//! # Stores
//!
//! [`MemoryStore`] serves one instance. `RedisStore` (feature `redis`) is shared by every
//! instance of a service and survives their restarts. Other backends implement
//! [`IdempotencyStore`], using [`Record::encode`] for a compact byte form.

mod body;
mod context_layer;
mod layer;
mod memory;
mod record;
#[cfg(feature = "redis")]
mod redis_store;
mod store;

pub use body::ResponseBody;
pub use context_layer::{ContextLayer, ContextService};
pub use layer::{
    IDEMPOTENT_REPLAYED, IdempotencyLayer, IdempotencyService, default_replayable, record_key,
};
pub use memory::MemoryStore;
pub use record::{DecodeError, Fingerprint, InFlight, Record, StoredResponse};
#[cfg(feature = "redis")]
pub use redis_store::RedisStore;
pub use store::{BoxFuture, Claim, IdempotencyStore, StoreError};
