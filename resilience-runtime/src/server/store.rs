//! The storage contract behind the layer.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::record::{InFlight, Record, StoredResponse};

/// A boxed, `Send` future: what the store methods return, so that the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What [`IdempotencyStore::claim`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The key was free; it now holds the caller's claim.
    Acquired,
    /// The key already holds this; nothing was written.
    Existing(Record),
}

/// Where the layer keeps claims and responses.
///
/// Keys are opaque strings built by [`record_key`](super::record_key). Every method must be
/// atomic with respect to the others on the same key, across every instance sharing the store:
/// that is what lets exactly one of several concurrent requests run the handler.
///
/// Expired entries must behave as absent. Implement it for a database by keeping the
/// [`Record::encode`] bytes with an expiry time, and doing each method in one transaction.
pub trait IdempotencyStore: Send + Sync {
    /// If nothing live is stored under `key`, stores `Record::InFlight(claim)` for `lease` and
    /// returns [`Claim::Acquired`]; otherwise returns what is stored and changes nothing.
    fn claim<'a>(
        &'a self,
        key: &'a str,
        claim: &'a InFlight,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>>;

    /// If `key` still holds `claim`, extends its lease to `lease` from now and returns `true`;
    /// otherwise returns `false` and changes nothing.
    fn renew<'a>(
        &'a self,
        key: &'a str,
        claim: &'a InFlight,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// If `key` holds `claim`, or nothing (the lease ran out and nobody claimed the key since),
    /// stores `Record::Completed(response)` for `ttl` and returns `true`; otherwise returns
    /// `false` and changes nothing.
    fn complete<'a>(
        &'a self,
        key: &'a str,
        claim: &'a InFlight,
        response: &'a StoredResponse,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// If `key` holds `claim`, removes it, so that the next request with the key runs the
    /// handler, and returns `true`; otherwise returns `false` and changes nothing.
    fn release<'a>(
        &'a self,
        key: &'a str,
        claim: &'a InFlight,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// What is stored under `key`, if anything live.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Record>, StoreError>>;

    /// Which part of the store holds `key`, below [`STORE_PARTS`], for a store whose parts
    /// fail apart (a Redis Cluster's masters): a claim of that part left unanswered takes
    /// only it as down for the layer's `store_down_for`, not the whole store. One part (0)
    /// by default.
    fn part(&self, key: &str) -> usize {
        let _ = key;
        0
    }
}

/// How many parts [`IdempotencyStore::part`] may tell apart (a Redis Cluster store's: one for
/// each of up to 64 masters, and 64 ranges of 256 slots for a key whose master it does not
/// know).
pub const STORE_PARTS: usize = 128;

impl<T: IdempotencyStore + ?Sized> IdempotencyStore for Arc<T> {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        claim: &'a InFlight,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        (**self).claim(key, claim, lease)
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        claim: &'a InFlight,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        (**self).renew(key, claim, lease)
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        claim: &'a InFlight,
        response: &'a StoredResponse,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        (**self).complete(key, claim, response, ttl)
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        claim: &'a InFlight,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        (**self).release(key, claim)
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Record>, StoreError>> {
        (**self).get(key)
    }

    fn part(&self, key: &str) -> usize {
        (**self).part(key)
    }
}

/// A store could not do what was asked (unreachable, full, corrupt data).
///
/// The layer answers 503 when a claim fails this way: it never runs the handler without a claim.
#[derive(Debug)]
pub struct StoreError {
    source: Box<dyn StdError + Send + Sync>,
    too_large: bool,
    room_in: Option<std::time::Duration>,
}

impl StoreError {
    /// Wraps the underlying error.
    pub fn new(source: impl Into<Box<dyn StdError + Send + Sync>>) -> StoreError {
        StoreError {
            source: source.into(),
            too_large: false,
            room_in: None,
        }
    }

    /// The store refuses for want of room it will have after `wait` (a full store whose
    /// oldest response may go then): the layer's 503 asks the client to come back then
    /// (`Retry-After`), not in a second.
    pub fn room_in(mut self, wait: std::time::Duration) -> StoreError {
        self.room_in = Some(wait);
        self
    }

    /// When the store expects room again, if it said ([`room_in`](Self::room_in)).
    pub fn room_after(&self) -> Option<std::time::Duration> {
        self.room_in
    }

    /// The response given to `complete` is larger than the store ever holds: asking again
    /// will not help. The layer stores a small "processed once, not kept" answer in its place.
    pub fn too_large(source: impl Into<Box<dyn StdError + Send + Sync>>) -> StoreError {
        StoreError {
            source: source.into(),
            too_large: true,
            room_in: None,
        }
    }

    /// Whether this is [`too_large`](StoreError::too_large).
    pub fn is_too_large(&self) -> bool {
        self.too_large
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "idempotency store: {}", self.source)
    }
}

impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}
