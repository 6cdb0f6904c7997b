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
//! PATCH by default), or it is a PUT or DELETE that carries a key, whatever `methods` says (a
//! keyed client resends and hedges those on the strength of the key). Other requests pass
//! through untouched. A covered request is identified by
//! (`Idempotency-Key`, method, path), optionally [scoped](IdempotencyLayer::scope) per tenant.
//! The path is the one the client sent, also when the layer sits in an axum router nested under
//! a prefix (`Router::nest("/tenants/{tenant}", …)` strips the prefix from the URI the layer
//! sees; the layer reads axum's `OriginalUri`). A framework that strips a prefix without
//! keeping the original needs a [`scope`](IdempotencyLayer::scope) naming what was stripped, and
//! so does a service whose tenants differ by `Host` alone (the host is not in the record key).
//! The path is taken as sent, not normalised: `/orders/%31` and `/orders/1`, or `/charges/` and
//! `/charges` under a path-normalising layer, are two records (a retry spelled otherwise by a
//! proxy runs the handler again). Its *fingerprint* is a SHA-256 of its query string and body
//! read as the README's table says (pairs of different names in any order, JSON members in
//! any order, a multipart boundary of its own); the media type only chooses the reading.
//!
//! | request | answer | handler runs |
//! |---|---|---|
//! | no key, key optional | the handler's | yes, unprotected |
//! | no key, [`require_key(true)`](IdempotencyLayer::require_key) | 400 `key-missing` | no |
//! | key empty, over 255 bytes, sent twice, malformed quoted string, or bare but not visible ASCII | 400 `key-invalid` | no |
//! | keyed, body over [`max_body`](IdempotencyLayer::max_body) | 413 (the key stays free) | no |
//! | keyed, body unreadable (the connection failed while it was read) | 400 `body-unreadable` | no |
//! | first with this key | the handler's; stored according to [`replayable`](IdempotencyLayer::replayable) (by default not 5xx, 408, 429; never a 409 with `Retry-After`, a "try later" passed on from further down), or whatever its status once the [`handler_limit`](IdempotencyLayer::handler_limit)'s time has run out (a call of it cut there) | yes, to its end |
//! | repeat, same fingerprint, first completed | stored status, headers and body, plus `Idempotent-Replayed: true` | no |
//! | repeat, other fingerprint | 422 `key-reused` | no |
//! | repeat, same fingerprint, first still running | 409 `in-progress` with `Retry-After: 1` | no |
//! | the store fails, panics or does not answer within [`store_timeout`](IdempotencyLayer::store_timeout) | 503 `store-unavailable` with `Retry-After` the seconds left of [`store_down_for`](IdempotencyLayer::store_down_for), at least 1 | no |
//! | the handler panics | 500 `handler-failed` | it did, once |
//! | the handler outlives [`handler_limit`](IdempotencyLayer::handler_limit) | 500 `handler-timed-out`, stored whatever [`replayable`](IdempotencyLayer::replayable) says: a repeat gets it (also when what it held panics as it is dropped) | cancelled at the limit, never run again |
//! | the handler answers a kept status, then its response body fails | the first caller: that status and a body cut short; a repeat: 500 `response-failed` | it did, once |
//!
//! # The key: the IETF draft and payment APIs
//!
//! draft-ietf-httpapi-idempotency-key-header makes `Idempotency-Key` a Structured Field
//! (RFC 9651) string: `Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"`. Payment
//! APIs, and this crate's own client by default, send the bare value. The layer takes both as
//! the same key: a value starting with `"` is parsed as an RFC 9651 item (with the `sfv`
//! crate), must be a string, and its escapes (`\"`, `\\`) are decoded; parameters are ignored;
//! a malformed one is 400. Any other value is the key as it is, 1 to 255 visible ASCII bytes.
//!
//! # Error answers
//!
//! Every error answer is an RFC 9457 `application/problem+json` body. By default its `type` is
//! `about:blank` and its `title` the status phrase, with a `detail` saying what to fix. With
//! [`problem_docs`](IdempotencyLayer::problem_docs) the `type` is the application's
//! documentation URI plus a fragment naming the problem (the names in the table above), the
//! `title` says what went wrong, and a `Link: <uri>; rel="describedby"` header points at the
//! page, as in the draft's examples.
//!
//! # Decisions
//!
//! - **One run, then replay.** The first request atomically *claims* the key in the store; of
//!   any number of concurrent requests with one key, exactly one wins the claim and runs the
//!   handler. The others get 409 at once rather than waiting: a client that retries on a timeout
//!   learns the first attempt is still running, and its next retry (after `Retry-After`) gets
//!   the replay. A keyed `#[resilient]` client does exactly that.
//! - **A claimed handler runs to its end.** The handler runs in a task of its own, detached
//!   from the connection: the client timing out, a proxy answering 504 before it, hyper dropping
//!   the response future, none of them stop it. Its response is stored and replayed to the
//!   retry. The task carries what the request's own task had: the current tracing span (and
//!   OpenTelemetry context), so the handler's spans and its calls' stay in the request's
//!   trace, and the trace and request id of a [`ContextLayer`] outside this layer. Not the
//!   caller's deadline: that is the time its attempt waits, and the handler runs on for the
//!   retry; its `#[resilient]` calls plan within the handler limit instead. What this costs is measured in `BENCHMARKS.md` (one task spawn per keyed request).
//!   The process must not exit under it: a graceful shutdown waits for connections, not for
//!   handlers whose caller is gone, so await [`IdempotencyLayer::drained`] after it.
//! - **A hard limit per layer** ([`handler_limit`](IdempotencyLayer::handler_limit), 60 s by
//!   default) bounds a handler that never ends: at the limit its future is dropped, which
//!   cancels it at its current `.await`, and the layer answers 500 `handler-timed-out` in its
//!   place. That 500 is stored whatever the layer keeps: a handler that long is most likely
//!   waiting on a call that already had its effect (a payment gateway slow to answer a charge
//!   it made), and a retry that ran it again would repeat the effect. A repeat gets the 500;
//!   a new operation needs a new key.
//! - **A panic is a 500.** A panicking handler is answered 500 `handler-failed`, and that 500
//!   goes through the same rule as a 500 the handler returned: by default it is not stored, and
//!   the key is released at once, so a retry runs the handler again (never a key stuck until
//!   its lease runs out). Why released: the panic unwound the handler, dropping what it held (a
//!   database transaction not committed rolls back), which is the contract of every 5xx here.
//!   A handler with effects that survive a panic should keep every status with
//!   [`replay_every_status`]: then the stored 500 is replayed and a new operation needs a new key.
//!   A panic in the service's `call` itself (a synchronous layer inside this one) is the
//!   handler's too.
//! - **A reused key is 422, even while the first request runs**: the body differs, so no
//!   answer to the first request is an answer to this one.
//! - **Which answers are stored is a choice** ([`IdempotencyLayer::replayable`]). The default,
//!   [`default_replayable`], keeps everything but 5xx, 408 and 429: those release the claim,
//!   so a retry with the same key runs the handler again. This assumes the usual contract of
//!   such answers: a handler that fails with 5xx left no effect behind (one transaction).
//!   **A 5xx raised after the effect** (the card charged, then saving the receipt failed)
//!   breaks it: the retry charges again. Such a handler must roll back before answering 5xx,
//!   or the layer must keep every answer ([`replay_every_status`]). A service error (the
//!   tower `Err`: no response at all) also releases the claim.
//! - **A response body that fails after a kept status** (a streamed body whose source broke
//!   after the handler answered 201) reaches the first caller as it is, cut short, and a 500
//!   `response-failed` problem is stored in its place: the handler stood by its effect, so a
//!   repeat is told so and does not run it again.
//! - **Stored bytes are bounded.** A response body over
//!   [`max_stored_body`](IdempotencyLayer::max_stored_body) (1 MiB by default) reaches the
//!   first caller in full (what the layer read up to the bound, then the rest as the handler
//!   streams it: never held whole in memory; read on to its end, for up to the handler's
//!   limit more, when that caller goes), and a 500 `response-not-kept` problem is stored in its place: a
//!   repeat learns that the operation ran once and is not run again. [`MemoryStore`] also
//!   bounds its total bytes (64 MiB by default), evicting the oldest completed responses first;
//!   a repeat of an evicted key runs the handler again, as after the TTL.
//!   Request bodies of keyed requests are buffered (2 MiB limit by default) to be fingerprinted;
//!   an unkeyed one streams through.
//! - **Responses are kept for the TTL** (24 h by default): status, headers (minus connection
//!   headers, `Content-Length` and `Date`) and the whole body.
//! - **Fail closed, and fast.** If the store cannot be reached, covered requests with a key get
//!   503 and the handler never runs without a claim. Every store call is bounded: by
//!   [`store_timeout`](IdempotencyLayer::store_timeout) (250 ms by default), and the taking
//!   back of a claim given up on by the lease; after a claim that
//!   got no answer in time, the store is taken as down for
//!   [`store_down_for`](IdempotencyLayer::store_down_for) (1 s) and keyed requests get their
//!   503 at once.
//! - **A refused request leaves no claim behind.** A claim command that timed out may still run
//!   when the store wakes up (a frozen Redis runs what it had queued). The layer, having
//!   answered "not processed, retry later", sends a release of that claim right behind it, so
//!   the retry finds the key free instead of a 409 for the whole lease.
//! - **A store lost while the handler runs never leads to a second run from this instance.**
//!   If storing the response fails, the layer keeps the response and its claim, answers
//!   repeats of that key from memory, and writes the response once the store answers again
//!   (retrying with backoff up to 1 s, for up to the TTL). Those kept responses are not bounded
//!   by [`MemoryStore`]'s limits: while the store stays down they accumulate, one per keyed
//!   request whose handler was already running when it went (new keyed requests get 503).
//!
//! # Exactly once, and its at-least-once edges
//!
//! Within one instance, or several sharing a store that keeps its data, a keyed operation runs
//! its handler exactly once however the connections carrying it fail. What remains, stated
//! plainly:
//!
//! - **An instance killed mid-handler** (`kill -9`, OOM, power): nobody renews its claim, the
//!   lease (10 s by default) expires, and a retry afterwards runs the handler again. The layer
//!   cannot know how far the dead handler got; that retry is at-least-once. Make such effects
//!   idempotent downstream (pass the key on to the payment gateway), or transactional.
//! - **A store lost while a handler runs, with several instances**: the response waits in the
//!   memory of the instance that ran it; until it is written, a repeat sent to another instance
//!   gets 503 (store down) or, if the store came back *without its data* (a Redis restarted
//!   without persistence) before the write-back, may claim the key and run again. The window is
//!   the write-back's retry interval (at most 100 ms in an outage's first 5 s, then 1 s) and a
//!   store call. If the instance also dies in that time,
//!   the response is lost and the lease rule above applies.
//! - **A claim lost to time**: if renewals fail for longer than the lease (the store
//!   unreachable, a failover, a thread the handler blocks), the claim expires under a running
//!   handler. Its instance still answers repeats 409 from memory while the handler runs, and
//!   claims the key again at the first renewal the store answers; a repeat sent to another
//!   instance in between (a renewal that failed is tried again 100 ms later, then less
//!   often, at most a second apart: that long after the store is back at most) may run the
//!   handler again (logged as "claim lost while the handler runs", counted `claim_lost`). Keep
//!   the lease well above the store's worst stall, and never block the handler's thread.
//! - **One instance cut off from a store the others reach** (its own connection, a network
//!   rule): its claim runs out with its lease while it cannot renew it, and a repeat through
//!   another instance runs the handler again; the window is the whole cut. The instance
//!   answers its own repeats from the response it kept; when it reaches the store again and
//!   finds the key taken by another request, it drops its response, answers what the store
//!   holds from then on, and counts the request `claim_lost` (the record of a completion keeps
//!   the token of its claim, so a completion of its own carried out although its reply was lost
//!   is told apart, however alike two runs' answers are).
//! - **A store that evicts**: a Redis with an evicting `maxmemory-policy` drops claims and kept
//!   answers under memory pressure (every record has an expiry, so even `volatile-*` policies
//!   take them). Use `noeviction`, or memory enough never to evict.
//!
//! # Metrics
//!
//! With the `metrics` feature, every request the layer covers is counted in
//! `resilience.idempotency.requests` by how it was answered (`outcome`: `handled`, `replayed`,
//! `released`, `in_progress`, `key_reused`, `store_unavailable`, …; the full list is in
//! [`telemetry`](crate::telemetry)) and by route (`http.route`: the template axum's router
//! matched, `/tenants/{tenant}/charges`, empty outside a router), and `resilience.idempotency.pending` is the number of
//! responses kept in memory until the store takes them (the "store lost while the handler
//! runs" case above): a value that stays above zero means the store is still down.
//!
//! # Stores
//!
//! [`MemoryStore`] serves one instance. `RedisStore` (feature `redis`), over one Redis or a
//! Redis Cluster, is shared by every instance of a service and survives their restarts. Other
//! backends implement [`IdempotencyStore`], using [`Record::encode`] for a compact byte form.

mod body;
mod context_layer;
mod layer;
mod memory;
mod record;
#[cfg(feature = "redis")]
mod redis_store;
mod served;
mod store;

pub use body::ResponseBody;
pub use context_layer::{ContextLayer, ContextService};
pub use layer::{
    IDEMPOTENT_REPLAYED, IdempotencyLayer, IdempotencyService, default_replayable, record_key,
    replay_every_status,
};
pub use memory::MemoryStore;
pub use record::{DecodeError, Fingerprint, InFlight, Record, StoredResponse};
#[cfg(feature = "redis")]
pub use redis_store::RedisStore;
pub use store::{BoxFuture, Claim, IdempotencyStore, STORE_PARTS, StoreError};

/// The longest any of the layers' durations is taken to be: "forever" for every purpose (about
/// 100 years), so that `Duration::MAX`, the natural way to say "keep forever", neither overflows
/// `Instant + Duration` nor asks Redis for an expiry beyond its range.
pub(crate) const FOREVER: std::time::Duration =
    std::time::Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// `now + d`, with `d` at most [`FOREVER`].
pub(crate) fn after(now: tokio::time::Instant, d: std::time::Duration) -> tokio::time::Instant {
    now + d.min(FOREVER)
}
