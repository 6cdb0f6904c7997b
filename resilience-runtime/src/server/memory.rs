//! The embedded store: one process, bounded, expiring.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::record::{InFlight, Record, StoredResponse};
use super::store::{BoxFuture, Claim, IdempotencyStore, StoreError};

/// An in-memory [`IdempotencyStore`] for a single instance of a service.
///
/// Bounded in keys and in bytes: when it holds `capacity` entries and a new key arrives, or
/// when a new response would take the stored bytes (bodies, headers and keys of completed
/// responses) past `max_bytes`, expired entries go first, then the oldest completed responses.
/// Claims of running handlers are never evicted (that would let a duplicate run); if every
/// entry is a live claim, the new claim fails and the layer answers 503. A repeat of an
/// evicted response's key runs the handler again, as after its TTL: size the bounds for the
/// retries you expect (minutes), not for the TTL, or set
/// [`min_retention`](Self::min_retention): a new key is then refused (503, nothing run) rather
/// than a response that young evicted. Evictions are counted ([`evicted`](Self::evicted)) and
/// logged at warn, at most once a minute. A single response larger than `max_bytes`
/// is refused with a [`StoreError`]; the layer's own
/// [`max_stored_body`](super::IdempotencyLayer::max_stored_body) (1 MiB by default, below the
/// 64 MiB default here) keeps that from happening.
///
/// Expiry follows the tokio clock, so a paused test clock drives it too. The lock is a plain
/// mutex held only for map operations, never across an `.await`.
///
/// Several instances of one service need a shared store such as `RedisStore`: with this one,
/// each instance would replay only what it ran itself.
pub struct MemoryStore {
    capacity: usize,
    max_bytes: usize,
    min_retention: Duration,
    inner: Mutex<Inner>,
}

struct Entry {
    record: Record,
    expires_at: Instant,
    seq: u64,
    /// When it was written.
    at: Instant,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Arc<str>, Entry>,
    /// Every entry, soonest expiry first.
    by_expiry: BTreeMap<(Instant, u64), Arc<str>>,
    /// Completed entries, oldest first: the eviction order once nothing has expired.
    completed: BTreeMap<u64, Arc<str>>,
    next_seq: u64,
    /// The bytes of every completed entry held.
    bytes: usize,
    /// Responses evicted before their TTL, and when that was last logged.
    evicted: u64,
    told_at: Option<Instant>,
    /// The bytes of the last response written or refused: what a running request's is
    /// expected to need (see `claim_now`).
    expect: usize,
}

/// What a record under `key` costs in [`MemoryStore::max_bytes`] terms: a kept response's
/// body, headers and key (a route's path may be long); a claim nothing (claims are bounded by
/// the capacity).
fn size(key: &str, record: &Record) -> usize {
    match record {
        Record::InFlight(_) => 0,
        Record::Completed(r) => {
            key.len()
                + r.body.len()
                + r.headers
                    .iter()
                    .map(|(n, v)| n.as_str().len() + v.len())
                    .sum::<usize>()
        }
    }
}

/// `response` in buffers of its own. A handler's body and header values may be slices of a
/// larger buffer (a downstream answer read by hyper, whose read buffer each slice keeps
/// alive): kept as they are, the bytes held would be far more than the bytes counted.
fn owned(response: &StoredResponse) -> StoredResponse {
    let mut headers = http::HeaderMap::with_capacity(response.headers.len());
    for (name, value) in &response.headers {
        let mut copy =
            http::HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        copy.set_sensitive(value.is_sensitive());
        headers.append(name.clone(), copy);
    }
    StoredResponse {
        token: response.token,
        fingerprint: response.fingerprint,
        status: response.status,
        headers,
        body: bytes::Bytes::copy_from_slice(&response.body),
    }
}

impl MemoryStore {
    /// The default capacity: 10 000 keys.
    pub const DEFAULT_CAPACITY: usize = 10_000;
    /// The default bound on stored response bytes: 64 MiB.
    pub const DEFAULT_MAX_BYTES: usize = 64 * 1024 * 1024;

    /// A store holding at most `capacity` keys (raised to 1 if 0) and
    /// [`DEFAULT_MAX_BYTES`](Self::DEFAULT_MAX_BYTES) of responses.
    pub fn new(capacity: usize) -> MemoryStore {
        MemoryStore::with_limits(capacity, MemoryStore::DEFAULT_MAX_BYTES)
    }

    /// A store holding at most `capacity` keys (raised to 1 if 0) and `max_bytes` of response
    /// bodies, headers and keys.
    pub fn with_limits(capacity: usize, max_bytes: usize) -> MemoryStore {
        MemoryStore {
            capacity: capacity.max(1),
            max_bytes,
            min_retention: Duration::ZERO,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Keeps every response at least this long (within its TTL): when the store is full and
    /// its oldest response is younger, a new key is refused (the layer answers 503 with
    /// `Retry-After`, nothing run) instead of that response being evicted, after which a retry
    /// of its key would run the handler again. Full: at the key count, or at the byte bound
    /// once the responses held leave no room for one more of the size last written for each
    /// request running and the new one. Zero (the default) evicts the oldest response
    /// whatever its age.
    pub fn min_retention(mut self, keep: Duration) -> MemoryStore {
        self.min_retention = keep;
        self
    }

    /// How many responses were evicted before their TTL to make room, since the store was
    /// made: each a key whose retry runs the handler again.
    pub fn evicted(&self) -> u64 {
        self.lock().evicted
    }

    /// The bytes of response bodies, headers and keys held now.
    pub fn bytes(&self) -> usize {
        let mut inner = self.lock();
        inner.purge(Instant::now());
        inner.bytes
    }

    /// The number of live entries (claims and responses).
    pub fn len(&self) -> usize {
        let mut inner = self.lock();
        inner.purge(Instant::now());
        inner.entries.len()
    }

    /// Whether no live entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every mutation keeps the maps consistent before it can panic, so poison is harmless.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn claim_now(&self, key: &str, claim: &InFlight, lease: Duration) -> Result<Claim, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.purge(now);
        if let Some(entry) = inner.entries.get(key) {
            return Ok(Claim::Existing(entry.record.clone()));
        }
        // Under `min_retention`, a new key is refused while the responses of the requests
        // running and of this one (each taken to be as large as the last) would find no room
        // without evicting a response too young: admitted, each would be refused its write
        // and kept by the layer until there is room, outside the store's bounds. Asked
        // first: a refusal evicts nothing.
        if !self.min_retention.is_zero() {
            let running = inner.entries.len().saturating_sub(inner.completed.len());
            let needed = inner.expect.saturating_mul(running + 1);
            inner.room_for(self, now, needed)?;
        }
        inner.make_room(self, now, 0)?;
        inner.insert(
            key.into(),
            Record::InFlight(*claim),
            super::after(now, lease),
        );
        Ok(Claim::Acquired)
    }

    fn renew_now(&self, key: &str, claim: &InFlight, lease: Duration) -> bool {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.purge(now);
        if !inner.holds(key, claim) {
            return false;
        }
        inner.remove(key);
        inner.insert(
            key.into(),
            Record::InFlight(*claim),
            super::after(now, lease),
        );
        true
    }

    fn complete_now(
        &self,
        key: &str,
        claim: &InFlight,
        response: &StoredResponse,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        let record = Record::Completed(owned(response));
        let bytes = size(key, &record);
        if bytes > self.max_bytes {
            return Err(StoreError::too_large(format!(
                "response of {bytes} bytes is over the memory store's bound of {} bytes",
                self.max_bytes
            )));
        }
        let mut inner = self.lock();
        inner.purge(now);
        inner.expect = bytes;
        let held = if inner.holds(key, claim) {
            inner.remove(key)
        } else if inner.entries.contains_key(key) {
            return Ok(false);
        } else {
            None
        };
        if let Err(e) = inner.make_room(self, now, bytes) {
            // No room: the claim stays as it was (its lease running), not dropped with the
            // response, which would free the key for another run.
            if let Some(claim) = held {
                inner.insert(key.into(), claim.record, claim.expires_at);
            }
            return Err(e);
        }
        inner.insert(key.into(), record, super::after(now, ttl));
        Ok(true)
    }

    fn release_now(&self, key: &str, claim: &InFlight) -> bool {
        let mut inner = self.lock();
        inner.purge(Instant::now());
        inner.holds(key, claim) && inner.remove(key).is_some()
    }

    fn get_now(&self, key: &str) -> Option<Record> {
        let mut inner = self.lock();
        inner.purge(Instant::now());
        inner.entries.get(key).map(|e| e.record.clone())
    }
}

impl Default for MemoryStore {
    fn default() -> MemoryStore {
        MemoryStore::new(MemoryStore::DEFAULT_CAPACITY)
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("capacity", &self.capacity)
            .field("max_bytes", &self.max_bytes)
            .field("len", &self.lock().entries.len())
            .finish()
    }
}

impl Inner {
    fn holds(&self, key: &str, claim: &InFlight) -> bool {
        matches!(self.entries.get(key), Some(Entry { record: Record::InFlight(c), .. }) if c == claim)
    }

    fn insert(&mut self, key: Arc<str>, record: Record, expires_at: Instant) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_expiry.insert((expires_at, seq), key.clone());
        self.bytes += size(&key, &record);
        if matches!(record, Record::Completed(_)) {
            self.completed.insert(seq, key.clone());
        }
        let entry = Entry {
            record,
            expires_at,
            seq,
            at: Instant::now(),
        };
        if let Some((old_key, old)) = self.entries.remove_entry(&key) {
            self.by_expiry.remove(&(old.expires_at, old.seq));
            self.completed.remove(&old.seq);
            self.bytes -= size(&old_key, &old.record);
        }
        self.entries.insert(key, entry);
    }

    fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.by_expiry.remove(&(entry.expires_at, entry.seq));
        self.completed.remove(&entry.seq);
        self.bytes -= size(key, &entry.record);
        Some(entry)
    }

    /// Drops every entry whose time is up.
    fn purge(&mut self, now: Instant) {
        while let Some(entry) = self.by_expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.remove(&key);
        }
    }

    /// Makes space for one more entry of `bytes`, evicting the oldest completed responses if
    /// needed (none younger than the store's `min_retention`).
    fn make_room(
        &mut self,
        store: &MemoryStore,
        now: Instant,
        bytes: usize,
    ) -> Result<(), StoreError> {
        let evict = self.room_for(store, now, bytes)?;
        let capacity = store.capacity;
        for _ in 0..evict {
            let Some((_, key)) = self.completed.pop_first() else {
                break;
            };
            self.remove(&key);
            // Expired entries were purged first: this one had time left.
            self.evicted += 1;
            if self
                .told_at
                .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(60))
            {
                self.told_at = Some(now);
                tracing::warn!(
                    capacity,
                    max_bytes = store.max_bytes,
                    evicted = self.evicted,
                    "idempotency memory store full: evicting responses before their TTL (a retry of their key runs the handler again); raise its bounds, set min_retention, or use RedisStore"
                );
            }
        }
        Ok(())
    }

    /// How many of the oldest responses must be evicted to make space for one more entry of
    /// `bytes`, counted before any goes: a refusal evicts nothing (responses evicted for a
    /// write refused anyway would be lost for nothing).
    fn room_for(
        &self,
        store: &MemoryStore,
        now: Instant,
        bytes: usize,
    ) -> Result<usize, StoreError> {
        let capacity = store.capacity;
        let full =
            |entries: usize, held: usize| entries >= capacity || held + bytes > store.max_bytes;
        let (mut entries, mut held, mut evict) = (self.entries.len(), self.bytes, 0);
        for key in self.completed.values() {
            if !full(entries, held) {
                break;
            }
            let Some(entry) = self.entries.get(key) else {
                continue;
            };
            let age = now.saturating_duration_since(entry.at);
            if age < store.min_retention {
                return Err(StoreError::new(format!(
                    "memory store full: a response it would have to evict is {age:?} old, under min_retention ({:?})",
                    store.min_retention
                ))
                // When it may go: past `min_retention`, or at its expiry if sooner.
                .room_in(
                    (store.min_retention - age)
                        .min(entry.expires_at.saturating_duration_since(now)),
                ));
            }
            entries -= 1;
            held -= size(key, &entry.record);
            evict += 1;
        }
        if entries >= capacity {
            return Err(StoreError::new(format!(
                "memory store full: all {capacity} entries are claims of running requests"
            )));
        }
        if full(entries, held) {
            return Err(StoreError::new(format!(
                "memory store full: {bytes} bytes more would not fit in its bound of {} with every response evicted",
                store.max_bytes
            )));
        }
        Ok(evict)
    }
}

impl IdempotencyStore for MemoryStore {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        claim: &'a InFlight,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        Box::pin(std::future::ready(self.claim_now(key, claim, lease)))
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        claim: &'a InFlight,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(std::future::ready(Ok(self.renew_now(key, claim, lease))))
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        claim: &'a InFlight,
        response: &'a StoredResponse,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(std::future::ready(
            self.complete_now(key, claim, response, ttl),
        ))
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        claim: &'a InFlight,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(std::future::ready(Ok(self.release_now(key, claim))))
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Record>, StoreError>> {
        Box::pin(std::future::ready(Ok(self.get_now(key))))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};

    use super::*;
    use crate::server::record::Fingerprint;

    const LEASE: Duration = Duration::from_secs(10);
    const TTL: Duration = Duration::from_secs(60);

    fn claim(token: u128) -> InFlight {
        InFlight {
            token,
            fingerprint: Fingerprint::of(None, b"body"),
        }
    }

    fn response(claim: &InFlight) -> StoredResponse {
        StoredResponse {
            token: claim.token,
            fingerprint: claim.fingerprint,
            status: StatusCode::CREATED,
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"done"),
        }
    }

    async fn acquire(store: &MemoryStore, key: &str, c: &InFlight) {
        assert_eq!(store.claim(key, c, LEASE).await.unwrap(), Claim::Acquired);
    }

    async fn complete(store: &MemoryStore, key: &str, c: &InFlight) {
        acquire(store, key, c).await;
        assert!(store.complete(key, c, &response(c), TTL).await.unwrap());
    }

    #[tokio::test]
    async fn a_claim_blocks_other_claims_until_released() {
        let store = MemoryStore::default();
        let (a, b) = (claim(1), claim(2));
        acquire(&store, "k", &a).await;
        assert_eq!(
            store.claim("k", &b, LEASE).await.unwrap(),
            Claim::Existing(Record::InFlight(a))
        );
        assert!(
            !store.release("k", &b).await.unwrap(),
            "only the owner releases"
        );
        assert!(store.release("k", &a).await.unwrap());
        acquire(&store, "k", &b).await;
    }

    #[tokio::test]
    async fn completion_replaces_the_claim_and_only_the_owner_completes() {
        let store = MemoryStore::default();
        let (a, b) = (claim(1), claim(2));
        acquire(&store, "k", &a).await;
        assert!(!store.complete("k", &b, &response(&b), TTL).await.unwrap());
        assert!(store.complete("k", &a, &response(&a), TTL).await.unwrap());
        assert_eq!(
            store.get("k").await.unwrap(),
            Some(Record::Completed(response(&a)))
        );
        assert!(
            !store.release("k", &a).await.unwrap(),
            "a response is not a claim"
        );
        assert!(!store.complete("k", &a, &response(&a), TTL).await.unwrap());
    }

    #[tokio::test]
    async fn stored_bytes_stay_under_the_bound_oldest_response_first() {
        let store = MemoryStore::with_limits(100, 10);
        let big = |c: &InFlight, n: usize| StoredResponse {
            body: Bytes::from(vec![b'x'; n]),
            ..response(c)
        };
        for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
            let c = claim(i as u128);
            acquire(&store, key, &c).await;
            assert!(store.complete(key, &c, &big(&c, 4), TTL).await.unwrap());
            assert!(store.bytes() <= 10, "{} bytes", store.bytes());
        }
        assert_eq!(store.get("a").await.unwrap(), None, "the oldest went");
        assert!(store.get("b").await.unwrap().is_some());
        // Two kept: each its 4 body bytes and its 1-byte key.
        assert_eq!(store.bytes(), 10);
        // One response over the whole bound is refused; the claim stays.
        let c = claim(9);
        acquire(&store, "d", &c).await;
        assert!(store.complete("d", &c, &big(&c, 11), TTL).await.is_err());
        assert_eq!(store.get("d").await.unwrap(), Some(Record::InFlight(c)));
        assert!(store.release("d", &c).await.unwrap());
        assert_eq!(store.bytes(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn claims_expire_after_their_lease_unless_renewed() {
        let store = MemoryStore::default();
        let (a, b) = (claim(1), claim(2));
        acquire(&store, "k", &a).await;
        tokio::time::advance(LEASE - Duration::from_millis(1)).await;
        assert!(store.renew("k", &a, LEASE).await.unwrap());
        tokio::time::advance(LEASE - Duration::from_millis(1)).await;
        assert!(store.get("k").await.unwrap().is_some(), "renewed");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(store.get("k").await.unwrap(), None);
        assert!(!store.renew("k", &a, LEASE).await.unwrap());
        acquire(&store, "k", &b).await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_claim_may_still_complete_a_free_key() {
        let store = MemoryStore::default();
        let a = claim(1);
        acquire(&store, "k", &a).await;
        tokio::time::advance(LEASE).await;
        assert!(store.complete("k", &a, &response(&a), TTL).await.unwrap());
        assert!(matches!(
            store.get("k").await.unwrap(),
            Some(Record::Completed(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn responses_expire_after_the_ttl() {
        let store = MemoryStore::default();
        complete(&store, "k", &claim(1)).await;
        tokio::time::advance(TTL - Duration::from_millis(1)).await;
        assert!(store.get("k").await.unwrap().is_some());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(store.get("k").await.unwrap(), None);
        assert!(store.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn full_store_evicts_expired_entries_first() {
        let store = MemoryStore::new(3);
        acquire(&store, "old", &claim(1)).await; // a claim: expires after LEASE
        complete(&store, "a", &claim(2)).await;
        complete(&store, "b", &claim(3)).await;
        tokio::time::advance(LEASE).await;
        acquire(&store, "new", &claim(4)).await;
        assert_eq!(store.get("old").await.unwrap(), None);
        for key in ["a", "b", "new"] {
            assert!(store.get(key).await.unwrap().is_some(), "{key}");
        }
    }

    #[tokio::test]
    async fn full_store_evicts_the_oldest_response_then_refuses() {
        let store = MemoryStore::new(3);
        complete(&store, "a", &claim(1)).await;
        complete(&store, "b", &claim(2)).await;
        acquire(&store, "c", &claim(3)).await;
        acquire(&store, "d", &claim(4)).await;
        assert_eq!(
            store.get("a").await.unwrap(),
            None,
            "oldest response evicted"
        );
        acquire(&store, "e", &claim(5)).await;
        assert_eq!(store.get("b").await.unwrap(), None);
        assert_eq!(store.evicted(), 2);
        assert!(
            store.claim("f", &claim(6), LEASE).await.is_err(),
            "claims of running requests are never evicted"
        );
        assert_eq!(store.len(), 3);
    }

    /// With `min_retention`, a full store refuses a new key rather than evict a response that
    /// young; once it is older, it is evicted as before.
    #[tokio::test(start_paused = true)]
    async fn a_full_store_keeps_a_response_younger_than_min_retention() {
        let store = MemoryStore::new(2).min_retention(Duration::from_secs(30));
        complete(&store, "a", &claim(1)).await;
        complete(&store, "b", &claim(2)).await;
        tokio::time::advance(Duration::from_secs(29)).await;
        let refused = store.claim("c", &claim(3), LEASE).await;
        assert!(refused.is_err(), "a 29 s old response is kept");
        assert!(store.get("a").await.unwrap().is_some());
        assert_eq!(store.evicted(), 0);
        tokio::time::advance(Duration::from_secs(1)).await;
        acquire(&store, "c", &claim(3)).await;
        assert_eq!(store.get("a").await.unwrap(), None, "30 s old: evicted");
        assert!(store.get("b").await.unwrap().is_some());
        assert_eq!(store.evicted(), 1);
    }

    /// A write that would need a young response evicted too is refused before any goes: the
    /// older one, evictable alone, stays.
    #[tokio::test(start_paused = true)]
    async fn a_refused_write_evicts_nothing() {
        let one = MemoryStore::default();
        complete(&one, "a", &claim(1)).await;
        let store =
            MemoryStore::with_limits(10, 2 * one.bytes()).min_retention(Duration::from_secs(30));
        complete(&store, "a", &claim(1)).await;
        tokio::time::advance(Duration::from_secs(40)).await;
        complete(&store, "b", &claim(2)).await;
        // "c" larger than either: both would have to go, and "b" is 0 s old.
        let c = claim(3);
        acquire(&store, "c", &c).await;
        let mut big = response(&c);
        big.body = bytes::Bytes::from(vec![b'x'; one.bytes() + 1]);
        assert!(store.complete("c", &c, &big, TTL).await.is_err());
        assert!(store.get("a").await.unwrap().is_some(), "nothing evicted");
        assert_eq!(store.evicted(), 0);
    }

    /// A response with no room left (every other entry a response under `min_retention`):
    /// refused, and the claim stays, so the key is not free for another run.
    #[tokio::test(start_paused = true)]
    async fn a_response_with_no_room_leaves_its_claim() {
        let one = MemoryStore::default();
        complete(&one, "b", &claim(2)).await;
        let store =
            MemoryStore::with_limits(3, one.bytes() + 1).min_retention(Duration::from_secs(30));
        // Claimed while the store was empty; "b" fills it meanwhile.
        let a = claim(1);
        acquire(&store, "a", &a).await;
        complete(&store, "b", &claim(2)).await;
        assert!(store.complete("a", &a, &response(&a), TTL).await.is_err());
        assert!(matches!(
            store.get("a").await.unwrap(),
            Some(Record::InFlight(c)) if c == a
        ));
    }

    /// Under `min_retention`, the byte bound refuses new keys as the key count does: once the
    /// responses held (all too young to evict) leave no room for one more of the size last
    /// written, for each request running and the new one, a new key is refused, before its
    /// handler runs (admitted, its response would be refused and kept by the layer, unbounded).
    #[tokio::test(start_paused = true)]
    async fn a_store_full_of_young_bytes_refuses_a_new_key() {
        let one = MemoryStore::default();
        complete(&one, "a", &claim(1)).await;
        let store =
            MemoryStore::with_limits(100, 2 * one.bytes()).min_retention(Duration::from_secs(60));
        complete(&store, "a", &claim(1)).await;
        // Room for one more: "b" is admitted; "c", beside "b" running, is not.
        acquire(&store, "b", &claim(2)).await;
        assert!(store.claim("c", &claim(3), LEASE).await.is_err());
        let b = claim(2);
        assert!(store.complete("b", &b, &response(&b), TTL).await.unwrap());
        assert!(store.claim("c", &claim(3), LEASE).await.is_err(), "full");
        assert_eq!(store.len(), 2);
        // Old enough to evict: admitted again.
        tokio::time::advance(Duration::from_secs(60)).await;
        acquire(&store, "c", &claim(3)).await;
        assert_eq!(store.evicted(), 0, "nothing evicted for a claim");
    }

    #[tokio::test]
    async fn completing_frees_no_room_and_needs_none() {
        let store = MemoryStore::new(1);
        let a = claim(1);
        acquire(&store, "a", &a).await;
        assert!(store.complete("a", &a, &response(&a), TTL).await.unwrap());
        assert_eq!(store.len(), 1);
    }
}
