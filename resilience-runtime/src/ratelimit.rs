//! A client-side rate limit by name: the generic cell rate algorithm (GCRA).
//!
//! A limit of `rate` calls per `per` with a `burst` lets `burst` calls go at once after a
//! quiet spell, then one every `per / rate`. The state is one number, the theoretical arrival
//! time (TAT) of the next call: locally an atomic, shared between instances a Redis key updated
//! by one atomic script (Redis's own clock, so the instances need not agree on time).
//!
//! A call that would have to wait longer than `max_wait` (or than what is left of its
//! deadline) is refused at once, without waiting in vain: the algorithm knows the wait up
//! front. A call that may wait reserves its permit, then sleeps; the wait counts against the
//! call's deadline, which starts before the bulkhead and the rate limit.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::policy::InvalidPolicy;

/// Where a rate limit's state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateLimitStore {
    /// In this process: each instance of the service has its own limit.
    Local,
    /// In Redis, shared by every instance that names the same limit and connects to the same
    /// Redis ([`use_redis`]) or Redis Cluster ([`use_redis_cluster`]). Until a connection is given, and while Redis does not answer, each
    /// instance falls back to the local limit (with a warning), so an outage of Redis never
    /// stops outbound calls and never lets one instance exceed the whole limit.
    Redis,
}

/// The settings of one rate limit (`[rate_limits.NAME]`, or `rate_limit(...)` inline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitSpec {
    /// Calls that may start per `per`, 1..=1000000.
    pub rate: u32,
    /// The period `rate` is counted over (default 1 s), 1ms..=24h.
    pub per: Duration,
    /// Calls that may go at once after a quiet spell, 1..=1000000 (default: `rate`).
    pub burst: u32,
    /// How long a call may wait for a permit (within its deadline); zero refuses at once.
    pub max_wait: Duration,
    /// Local, or shared through Redis.
    pub store: RateLimitStore,
}

impl RateLimitSpec {
    /// Checks the ranges documented on each field, with the rule book's messages.
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        use resilience_spec::rules;
        let bad = |b: resilience_spec::Broken| InvalidPolicy(b.to_string());
        rules::rate_limit_count("rate", u64::from(self.rate)).map_err(bad)?;
        rules::rate_limit_count("burst", u64::from(self.burst)).map_err(bad)?;
        rules::rate_limit_per(self.per).map_err(bad)
    }

    /// Time between two calls at the sustained rate, in nanoseconds (at least 1), rounded up:
    /// never more than the rate (rounded down, 700,000 per millisecond let a million through).
    fn interval_nanos(&self) -> u64 {
        (self.per.as_nanos().div_ceil(u128::from(self.rate.max(1)))).max(1) as u64
    }
}

/// The most a local limit lets callers run ahead of its rate, in nanoseconds.
const MAX_TOLERANCE_NANOS: u64 = 1 << 62;

/// Why [`RateLimiter::acquire_by`] gave no permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refused {
    /// The wait for a permit would be longer than `max_wait`.
    Limited,
    /// The wait for a permit would end after the call's deadline.
    Deadline,
}

/// A copy of a rate limit's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitSnapshot {
    /// Permits given at once.
    pub admitted: u64,
    /// Permits given after a wait.
    pub waited: u64,
    /// Calls refused.
    pub rejected: u64,
    /// Decisions taken locally because the Redis store had no connection, did not answer, or
    /// was known down (it failed to answer less than a second before).
    pub local_fallbacks: u64,
    /// Decisions asked of Redis that it failed (an error, or no answer within 250 ms). After
    /// each, Redis is taken as down for this limit for a second: the decisions meanwhile are
    /// local at once, without waiting for it again.
    pub store_unanswered: u64,
}

/// A rate limit shared by name.
#[derive(Debug)]
pub struct RateLimiter {
    name: &'static str,
    spec: RateLimitSpec,
    /// The time between two calls at the sustained rate, and how far ahead of it the burst
    /// lets callers run, in nanoseconds: computed once (a 128-bit division on every call was
    /// about 4 ns of it).
    interval_and_tolerance: (u64, u64),
    epoch: Instant,
    /// The theoretical arrival time of the next call, in nanoseconds since `epoch`.
    tat: AtomicU64,
    /// Calls let through, on every thread: striped.
    admitted: crate::counters::Striped,
    waited: AtomicU64,
    rejected: AtomicU64,
    fallbacks: AtomicU64,
    unanswered: AtomicU64,
    #[cfg(feature = "redis")]
    /// Until when (nanoseconds since `epoch`) the Redis store is taken as down for this limit;
    /// 0: it is not.
    down_until: AtomicU64,
    #[cfg(feature = "redis")]
    /// How long (nanoseconds) the calls Redis left short of time without an answer waited for
    /// it, added up since it last answered one.
    slow_waited: AtomicU64,
    #[cfg(feature = "redis")]
    /// The permits this instance gave alone (Redis down, slow or absent) since Redis last took
    /// them in: while any, each ask tells Redis how far the local limit runs ahead of now.
    alone: AtomicU64,
    /// The key of its local decisions' counter, built once (counting then allocates nothing,
    /// with a recorder or without).
    #[cfg(feature = "metrics")]
    local_key: metrics::Key,
}

/// A local permit reserved by a call still waiting for it: given back if the call is dropped
/// before its time and its reservation is still the last one (the theoretical arrival time,
/// still the one it set, moves back one interval, so the next call may take its slot). One
/// reserved after it keeps its own slot, and the dropped one's is lost: giving it back then
/// would hand the next call the same slot as that later one, two calls at once under a limit
/// that spaces them.
///
/// A permit Redis reserved is given back there the same way (its TAT, if still the one this
/// call's reservation set, moved back one interval, in one script), sent from a task of its
/// own as the call is dropped, with the local permit that mirrored it.
struct GiveBack<'a> {
    limiter: &'a RateLimiter,
    /// The theoretical arrival time this call's reservation set.
    reserved: u64,
    /// The TAT Redis set for this call's permit (its microseconds), when Redis gave it.
    #[cfg(feature = "redis")]
    shared: Option<u64>,
}

impl Drop for GiveBack<'_> {
    fn drop(&mut self) {
        let (t, _) = self.limiter.interval_and_tolerance();
        let _ = self.limiter.tat.compare_exchange(
            self.reserved,
            self.reserved.saturating_sub(t),
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
        #[cfg(feature = "redis")]
        if let Some(tat) = self.shared {
            shared::give_back(self.limiter.name, &self.limiter.spec, tat);
        }
    }
}

/// What a call reserved: the local limit's TAT, and Redis's when Redis gave the permit.
#[derive(Clone, Copy)]
struct Reserved {
    local: u64,
    #[cfg(feature = "redis")]
    shared: Option<u64>,
}

impl Reserved {
    fn local(local: u64) -> Reserved {
        Reserved {
            local,
            #[cfg(feature = "redis")]
            shared: None,
        }
    }
}

impl RateLimiter {
    /// A limit with a full burst available.
    ///
    /// # Panics
    ///
    /// If `spec` is invalid; [`RateLimiter::try_new`] returns the error.
    pub fn new(name: &'static str, spec: RateLimitSpec) -> RateLimiter {
        match RateLimiter::try_new(name, spec) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        }
    }

    /// A limit with a full burst available, or why `spec` is invalid.
    pub fn try_new(name: &'static str, spec: RateLimitSpec) -> Result<RateLimiter, InvalidPolicy> {
        spec.validate()?;
        let t = spec.interval_nanos();
        Ok(RateLimiter {
            name,
            spec,
            interval_and_tolerance: (
                t,
                t.saturating_mul(u64::from(spec.burst))
                    .min(MAX_TOLERANCE_NANOS),
            ),
            epoch: Instant::now(),
            tat: AtomicU64::new(0),
            admitted: Default::default(),
            waited: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            unanswered: AtomicU64::new(0),
            #[cfg(feature = "redis")]
            down_until: AtomicU64::new(0),
            #[cfg(feature = "redis")]
            slow_waited: AtomicU64::new(0),
            #[cfg(feature = "redis")]
            alone: AtomicU64::new(0),
            #[cfg(feature = "metrics")]
            local_key: metrics::Key::from_parts(
                crate::telemetry::names::RATE_LIMIT_LOCAL_DECISIONS,
                vec![metrics::Label::new("rate_limit", name)],
            ),
        })
    }

    /// Its settings.
    pub fn spec(&self) -> RateLimitSpec {
        self.spec
    }

    /// Its name (the function's path when private to one function).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Its counters now.
    pub fn snapshot(&self) -> RateLimitSnapshot {
        RateLimitSnapshot {
            admitted: self.admitted.get(),
            waited: self.waited.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            local_fallbacks: self.fallbacks.load(Ordering::Relaxed),
            store_unanswered: self.unanswered.load(Ordering::Relaxed),
        }
    }

    /// Takes a permit now, or refuses, never waiting: from this instance's own limit alone,
    /// never asking the store (a `store = "redis"` limit's share across instances is
    /// [`acquire_by`](Self::acquire_by)'s, which the generated code uses: it waits for Redis's
    /// answer).
    pub fn try_acquire(&self) -> Result<(), Refused> {
        self.reserve_local(Instant::now(), Duration::ZERO)
            .map(|_| ())
    }

    /// Takes a permit, waiting for it up to `max_wait` and no later than `deadline`. A wait
    /// longer than either is refused at once. The permit is reserved before the wait; a call
    /// dropped while it waits gives it back (a caller's timeout shorter than `max_wait` would
    /// otherwise spend permits nothing used, and make later calls wait for them): locally, and
    /// in Redis when Redis gave it.
    pub async fn acquire_by(&self, deadline: Instant) -> Result<(), Refused> {
        let now = Instant::now();
        let left = deadline.saturating_duration_since(now);
        // No time left (a caller's `X-Timeout-Ms: 0`, an outer attempt that has run out):
        // nothing could be sent with a permit, so none is taken.
        if left.is_zero() {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Deadline);
        }
        // A wait must end before the deadline, with time left to send something.
        let allowed = self.spec.max_wait.min(left - Duration::from_nanos(1));
        // What was reserved, locally and in Redis: given back by a caller that stops waiting
        // for its permit.
        let reserved = match self.spec.store {
            RateLimitStore::Local => self
                .reserve_local_reserving(now, allowed)
                .map(|(w, tat)| (w, Some(Reserved::local(tat))))
                .map_err(|_| self.why_refused(self.local_wait(now), left)),
            RateLimitStore::Redis => self.reserve_shared(now, allowed, left).await,
        };
        let (wait, local) = match reserved {
            Ok(w) => w,
            Err(why) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(why);
            }
        };
        if wait.is_zero() {
            self.admitted.incr();
        } else {
            let give_back = local.map(|reserved| GiveBack {
                limiter: self,
                reserved: reserved.local,
                #[cfg(feature = "redis")]
                shared: reserved.shared,
            });
            tokio::time::sleep_until(now + wait).await;
            std::mem::forget(give_back);
            // Counted once given: a call dropped while it waited gave its permit back.
            self.waited.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Why a permit that would come after `needed` was refused to a call with `left` before
    /// its deadline: for want of time when `needed` was within `max_wait` (the deadline came
    /// first), else the limit.
    fn why_refused(&self, needed: Duration, left: Duration) -> Refused {
        if left < self.spec.max_wait && needed <= self.spec.max_wait {
            Refused::Deadline
        } else {
            Refused::Limited
        }
    }

    /// The local limit's interval between permits and how far callers may run ahead of it, in
    /// nanoseconds. At most about 146 years ahead (2^62 ns), so that the theoretical arrival
    /// time, at most `now + tolerance + t`, never saturates: a saturated one would make every
    /// wait zero and the limit stop limiting (`rate = 1, per = "24h", burst = 300000`).
    #[inline]
    fn interval_and_tolerance(&self) -> (u64, u64) {
        self.interval_and_tolerance
    }

    /// The wait a permit of the local limit would take at `now` (none reserved).
    fn local_wait(&self, now: Instant) -> Duration {
        let (t, tolerance) = self.interval_and_tolerance();
        let now_n = self.nanos_since_epoch(now);
        let tat = self.tat.load(Ordering::Relaxed);
        Duration::from_nanos(
            tat.max(now_n)
                .saturating_add(t)
                .saturating_sub(now_n)
                .saturating_sub(tolerance),
        )
    }

    /// GCRA on the local atomic: the wait before a permit from `now` (zero: now), or refused
    /// when it would exceed `allowed`.
    ///
    /// `now` is the caller's reading of the clock, which may be older than a reading another
    /// thread has since moved the limit on with (this one was descheduled in between: a
    /// millisecond or more on a busy machine). Against a limit whose burst is shorter than
    /// that age, the call would be refused for its reading's age alone, at any rate: refused,
    /// it asks again with the clock read now.
    #[inline]
    fn reserve_local(&self, now: Instant, allowed: Duration) -> Result<Duration, Refused> {
        self.reserve_local_reserving(now, allowed)
            .map(|(wait, _)| wait)
    }

    /// [`reserve_local`](Self::reserve_local), with the theoretical arrival time the
    /// reservation set (for a [`GiveBack`]).
    #[inline]
    fn reserve_local_reserving(
        &self,
        now: Instant,
        allowed: Duration,
    ) -> Result<(Duration, u64), Refused> {
        match self.reserve_local_at(now, allowed) {
            Ok(reserved) => Ok(reserved),
            Err(why) => self.reserve_local_again(now, allowed, why),
        }
    }

    /// [`reserve_local`](Self::reserve_local) refused at `now`: asked again with the clock
    /// read now.
    #[cold]
    #[inline(never)]
    fn reserve_local_again(
        &self,
        now: Instant,
        allowed: Duration,
        refused: Refused,
    ) -> Result<(Duration, u64), Refused> {
        let later = Instant::now();
        let spent = later.saturating_duration_since(now);
        if spent.is_zero() {
            return Err(refused);
        }
        // A wait counted from `now`, as the caller sleeps until `now + wait`; none is none.
        self.reserve_local_at(later, allowed.saturating_sub(spent))
            .map(|(wait, tat)| (if wait.is_zero() { wait } else { wait + spent }, tat))
    }

    #[inline]
    fn reserve_local_at(
        &self,
        now: Instant,
        allowed: Duration,
    ) -> Result<(Duration, u64), Refused> {
        let (t, tolerance) = self.interval_and_tolerance();
        let now_n = self.nanos_since_epoch(now);
        let allowed_n = allowed.as_nanos().min(u128::from(u64::MAX)) as u64;
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let new_tat = tat.max(now_n).saturating_add(t);
            let wait = new_tat.saturating_sub(now_n).saturating_sub(tolerance);
            if wait > allowed_n {
                return Err(Refused::Limited);
            }
            match self
                .tat
                .compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Ok((Duration::from_nanos(wait), new_tat)),
                Err(seen) => tat = seen,
            }
        }
    }

    /// The Redis store decides; while it is known down, or when it fails to answer, the local
    /// limit does, at once. A wait for Redis counts: it is bounded by half the time `left`
    /// before the call's deadline (a Redis slower than that leaves the decision to the local
    /// limit in the other half), and the local decision is taken at the time it is, within
    /// what is left of `allowed`, its wait returned from `now`. With the wait, whether the
    /// local limit decided.
    #[cfg(feature = "redis")]
    async fn reserve_shared(
        &self,
        now: Instant,
        allowed: Duration,
        left: Duration,
    ) -> Result<(Duration, Option<Reserved>), Refused> {
        let down_until = self.down_until.load(Ordering::Relaxed);
        // Redis is asked while it is up; once the time it was taken as down for is over, by one
        // call, which takes the next `STORE_TIMEOUT` for its question, while the others go on
        // deciding locally at once (else each call of that moment would wait for a Redis
        // still frozen, every second).
        let ask = down_until == 0
            || (self.nanos_since_epoch(now) >= down_until
                && self
                    .down_until
                    .compare_exchange(
                        down_until,
                        self.nanos_since_epoch(now + shared::STORE_TIMEOUT).max(1),
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    )
                    .is_ok());
        if ask {
            // A call dropped while Redis is still to answer: its script may have gone out and
            // spent a permit there, so it is spent on the local limit too (as one Redis gave).
            struct Unanswered<'a>(Option<(&'a RateLimiter, Instant)>);
            impl Drop for Unanswered<'_> {
                fn drop(&mut self) {
                    if let Some((limiter, now)) = self.0.take() {
                        limiter.granted_elsewhere(now);
                    }
                }
            }
            let mut unanswered = Unanswered(Some((self, now)));
            // After permits given alone: how far this instance's own limit runs ahead of now
            // (they, and Redis's own to it), which Redis spends too; none otherwise (a call
            // dropped while Redis was to answer is spent locally, and may not be in Redis).
            let alone = self.alone.load(Ordering::Relaxed);
            let ahead = if alone == 0 {
                Duration::ZERO
            } else {
                Duration::from_nanos(
                    self.tat
                        .load(Ordering::Relaxed)
                        .saturating_sub(self.nanos_since_epoch(now)),
                )
            };
            let answer = shared::reserve(self.name, &self.spec, allowed, left, ahead).await;
            unanswered.0 = None;
            if alone != 0
                && matches!(
                    answer,
                    shared::Answer::Wait(..) | shared::Answer::Refused(_)
                )
            {
                // Taken in by Redis (a refusal stores it too), unless more were given alone
                // meanwhile: those go with the next ask.
                let _ = self
                    .alone
                    .compare_exchange(alone, 0, Ordering::Relaxed, Ordering::Relaxed);
            }
            match answer {
                shared::Answer::Wait(wait, shared_tat) => {
                    self.slow_waited.store(0, Ordering::Relaxed);
                    if down_until != 0 {
                        self.store_answers();
                    }
                    let local = self.granted_elsewhere(now);
                    // Redis counted the wait from when its script ran, some time after `now`
                    // (a slow or frozen Redis, up to `STORE_TIMEOUT`): counted from its answer,
                    // never earlier than Redis spaced it (two permits it gave 100 ms apart,
                    // both answered 150 ms late, went out together). Unless that passes the
                    // deadline (the answer's way back counted too): then from `now`, which
                    // Redis's own bound on the wait keeps within it; a permit Redis gave is
                    // never refused.
                    let spent = Instant::now().saturating_duration_since(now);
                    let wait = if wait.is_zero() || spent + wait >= left {
                        wait
                    } else {
                        spent + wait
                    };
                    return Ok((
                        wait,
                        Some(Reserved {
                            local,
                            shared: Some(shared_tat),
                        }),
                    ));
                }
                shared::Answer::Refused(needed) => {
                    self.slow_waited.store(0, Ordering::Relaxed);
                    if down_until != 0 {
                        self.store_answers();
                    }
                    return Err(self.why_refused(needed, left));
                }
                shared::Answer::Failed => self.store_failed(),
                shared::Answer::Slow(waited) => self.slow_answer(waited),
                shared::Answer::NoConnection => self.no_connection(),
            }
        }
        self.local_decision();
        let later = Instant::now();
        let spent = later.saturating_duration_since(now);
        let (wait, tat) = self
            .reserve_local_reserving(later, allowed.saturating_sub(spent))
            .map_err(|_| self.why_refused(spent + self.local_wait(later), left))?;
        self.alone.fetch_add(1, Ordering::Relaxed);
        // A wait counted from `now`, as the caller sleeps until `now + wait`; none is none (a
        // permit free locally is given at once, not after a timer).
        let wait = if wait.is_zero() { wait } else { spent + wait };
        Ok((wait, Some(Reserved::local(tat))))
    }

    /// A permit Redis gave this instance, spent on the local limit too (without its check):
    /// when Redis is down or slow and this instance decides locally, it does so knowing what
    /// it already took, and never runs a fresh burst on top of the shared limit's.
    #[cfg(feature = "redis")]
    fn granted_elsewhere(&self, now: Instant) -> u64 {
        // The local reservation with no bound on its wait: never refused.
        self.reserve_local_at(now, Duration::MAX)
            .map_or(0, |(_, tat)| tat)
    }

    #[cfg(not(feature = "redis"))]
    async fn reserve_shared(
        &self,
        now: Instant,
        allowed: Duration,
        left: Duration,
    ) -> Result<(Duration, Option<Reserved>), Refused> {
        self.no_connection();
        self.local_decision();
        self.reserve_local_reserving(now, allowed)
            .map(|(w, tat)| (w, Some(Reserved::local(tat))))
            .map_err(|_| self.why_refused(self.local_wait(now), left))
    }

    fn nanos_since_epoch(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// Redis did not answer within half the time a call had left (under [`STORE_TIMEOUT`](shared::STORE_TIMEOUT)),
    /// `waited`: the call decides locally with the rest. Once such calls have waited
    /// [`STORE_TIMEOUT`](shared::STORE_TIMEOUT) in all without an answer, Redis is taken as
    /// down, as after one call's full wait; a few calls with a millisecond or two left, far
    /// apart, do not take a Redis that answers the others as down.
    #[cfg(feature = "redis")]
    fn slow_answer(&self, waited: Duration) {
        let waited = waited.as_nanos().min(u128::from(u64::MAX)) as u64;
        let total = self
            .slow_waited
            .fetch_add(waited, Ordering::AcqRel)
            .saturating_add(waited);
        if total >= shared::STORE_TIMEOUT.as_nanos() as u64 {
            self.slow_waited.store(0, Ordering::Relaxed);
            self.store_failed();
        }
    }

    /// Redis answered (a permit or a refusal) after it was taken as down: it is up again,
    /// said once.
    #[cfg(feature = "redis")]
    fn store_answers(&self) {
        if self.down_until.swap(0, Ordering::Relaxed) != 0 {
            tracing::info!(
                rate_limit = self.name,
                "rate limit shared through Redis: Redis answers again"
            );
        }
    }

    /// Redis failed a decision: taken as down for this limit for [`STORE_DOWN_FOR`], so that
    /// the calls meanwhile do not each wait for it. Logged when it was up.
    #[cfg(feature = "redis")]
    fn store_failed(&self) {
        self.unanswered.fetch_add(1, Ordering::Relaxed);
        let until = self
            .nanos_since_epoch(Instant::now() + STORE_DOWN_FOR)
            .max(1);
        if self.down_until.swap(until, Ordering::Relaxed) == 0 {
            tracing::warn!(
                rate_limit = self.name,
                "rate limit shared through Redis: Redis failed to answer; each instance holds to the limit locally until it does"
            );
        }
    }

    /// A decision of a shared limit taken locally: counted, and (feature `metrics`) told the
    /// recorder, so that an alert can see the instances holding to the limit alone.
    fn local_decision(&self) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        {
            static META: metrics::Metadata<'static> =
                metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
            metrics::with_recorder(|r| r.register_counter(&self.local_key, &META).increment(1));
        }
    }

    /// No Redis was given (`use_redis`): logged once per limit.
    fn no_connection(&self) {
        if self.fallbacks.load(Ordering::Relaxed) == 0 {
            tracing::warn!(
                rate_limit = self.name,
                "rate limit shared through Redis has no Redis to talk to: each instance holds to the limit locally"
            );
        }
    }
}

/// How long a Redis that failed a rate-limit decision is taken as down (for that limit).
#[cfg(feature = "redis")]
const STORE_DOWN_FOR: Duration = Duration::from_secs(1);

#[cfg(feature = "redis")]
pub use shared::{connect_redis, connect_redis_cluster, use_redis, use_redis_cluster};

#[cfg(feature = "redis")]
mod shared {
    use std::sync::OnceLock;
    use std::time::Duration;

    use redis::aio::ConnectionManager;
    use redis::cluster_async::ClusterConnection;

    use super::RateLimitSpec;
    use crate::redis_conn::{KeyScript, RedisConn};

    /// How long a decision may wait for Redis before the local limit decides instead.
    pub(super) const STORE_TIMEOUT: Duration = resilience_spec::packed::RATE_STORE_TIMEOUT;

    static CONN: OnceLock<RedisConn> = OnceLock::new();

    /// GCRA in one atomic step, on Redis's clock (microseconds). KEYS: the TAT, and Redis's
    /// time when it last gave a permit. ARGV: interval, tolerance (interval × burst), the
    /// longest wait allowed, and how far the asking instance's own limit runs ahead of now (0
    /// unless it gave permits alone since Redis last took them in), all in microseconds: the
    /// TAT is at least that far ahead, stored even when the call is refused (the permits the
    /// instance gave alone while Redis did not answer are spent in Redis too once it does,
    /// for every instance's next asks). Returns the wait in microseconds and the TAT
    /// it set (for a give-back), or `-1 - wait` and 0 when refused (nothing is reserved then):
    /// the wait the permit would have taken, which tells a refusal for the deadline from one
    /// by the limit.
    ///
    /// A clock that went back since the last permit (a failover to a replica whose clock is
    /// behind, a step of the server's clock) moves the TAT back with it, as if that permit had
    /// been given just now (the least the clock can have gone back: never more permits than
    /// the limit allows): without that, a TAT written an hour ahead of the new clock refused
    /// every call for that hour. A clock that jumps forward gives one burst early, as GCRA
    /// does after any quiet spell. A TAT written without the time beside it (by a version
    /// before it) is read as it is.
    static RESERVE: KeyScript = KeyScript::new(
        r"local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local allowed = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
local at = tonumber(redis.call('GET', KEYS[2]) or now)
if at > now then tat = tat - (at - now) end
if tat < now then tat = now end
local ahead = tonumber(ARGV[4] or '0')
local pushed = now + ahead > tat
if pushed then tat = now + ahead end
local new_tat = tat + interval
local wait = new_tat - now - tolerance
if wait < 0 then wait = 0 end
if wait > allowed then
  if pushed then
    local px = math.ceil((tat - now) / 1000) + 1
    redis.call('SET', KEYS[1], tat, 'PX', px)
    redis.call('SET', KEYS[2], now, 'PX', px)
  end
  return {-1 - wait, 0}
end
local px = math.ceil((new_tat - now) / 1000) + 1
redis.call('SET', KEYS[1], new_tat, 'PX', px)
redis.call('SET', KEYS[2], now, 'PX', px)
return {wait, new_tat}",
    );

    /// A permit given back by a call that stopped waiting for it: the TAT moves back one
    /// interval if it is still the one that call's reservation set (one reserved after it
    /// keeps its slot, and the given-back one is lost, as locally). KEYS: the TAT. ARGV: the
    /// TAT the reservation set, the interval (microseconds). Returns 1 if given back.
    static GIVE_BACK: KeyScript = KeyScript::new(
        r"local tat = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tat ~= tonumber(ARGV[1]) then return 0 end
local px = redis.call('PTTL', KEYS[1])
if px <= 0 then return 0 end
redis.call('SET', KEYS[1], tat - tonumber(ARGV[2]), 'PX', px)
return 1",
    );

    /// Sends [`GIVE_BACK`] for a permit Redis reserved at `tat`, from a task of its own (the
    /// call giving it back is being dropped), bounded by [`STORE_TIMEOUT`]. Nothing without a
    /// runtime to run it on, or without Redis.
    pub(super) fn give_back(name: &str, spec: &RateLimitSpec, tat: u64) {
        let (Some(conn), Ok(rt)) = (CONN.get(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let mut conn = conn.clone();
        let interval = interval_micros(spec);
        let (key, _) = keys(name);
        let name = name.to_owned();
        rt.spawn(async move {
            let keys = [key.as_str()];
            let call = GIVE_BACK.run_on::<i64>(&mut conn, &keys, |c| {
                c.arg(tat).arg(interval);
            });
            match tokio::time::timeout(STORE_TIMEOUT, call).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(rate_limit = name, error = %e, "rate limit: giving a permit back to Redis failed");
                }
                Err(_) => {
                    tracing::debug!(rate_limit = name, "rate limit: Redis did not answer a permit given back");
                }
            }
        });
    }

    /// Shares every rate limit declared `store = "redis"` through this Redis, process-wide.
    /// The first connection given stays (this one, [`connect_redis`]'s or
    /// [`use_redis_cluster`]'s); later calls return `false`. The connection is used as it is,
    /// not watched: after a Redis host vanished without a reset it waits until the kernel
    /// gives up on the socket (some fifteen minutes, each instance deciding alone meanwhile:
    /// the limiter gives up on Redis after 250 ms, before a response timeout of the client's
    /// could end a command, and the client reconnects on a dropped connection, not on a
    /// timeout), and after a failover that left it on a Redis become a replica, every
    /// decision is local for as long as the process lives. [`connect_redis`] makes a
    /// connection that is watched for both.
    pub fn use_redis(conn: ConnectionManager) -> bool {
        CONN.set(RedisConn::Single(conn)).is_ok()
    }

    /// Connects to the Redis at `url` (`redis://host:port/db`) and shares every rate limit
    /// declared `store = "redis"` through it, process-wide, as [`use_redis`] does; the
    /// connection watched as `RedisStore::connect`'s is: one that leaves every command
    /// unanswered for 2 s (a Redis host that vanished without a reset: powered off, cut off
    /// by a partition) is replaced by a new one, where the client alone would wait for the
    /// kernel to give up on the socket, some fifteen minutes of each instance deciding alone;
    /// and one answered `READONLY` (a failover moved the address to a new master) at once.
    /// `Ok(false)`: a connection was given already, and stays.
    pub async fn connect_redis(url: &str) -> redis::RedisResult<bool> {
        let client = redis::Client::open(url)?;
        let conn = crate::redis_conn::Watched::connect(client).await?;
        Ok(CONN.set(RedisConn::Watched(conn)).is_ok())
    }

    /// Connects to the Redis Cluster of these nodes (one or more URLs; the client learns the
    /// others and the slots) and shares every rate limit declared `store = "redis"` through
    /// it, process-wide, as [`use_redis_cluster`] does; the connection made as
    /// `RedisStore::connect_cluster`'s is (a response timeout of 1 s, and sockets that find a
    /// node whose host vanished without a reset in seconds, where a client's defaults wait
    /// for the kernel to give up, some fifteen minutes). `Ok(false)`: a connection was given
    /// already, and stays.
    pub async fn connect_redis_cluster<I, S>(urls: I) -> redis::RedisResult<bool>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let conn = crate::redis_conn::cluster(urls).await?;
        Ok(CONN.set(RedisConn::Cluster(conn)).is_ok())
    }

    /// Shares every rate limit declared `store = "redis"` through this Redis Cluster,
    /// process-wide. Each limit is one key, on the master of its slot; a master that is down
    /// or slow (250 ms) leaves the limits whose keys it holds to each instance's local limit,
    /// as a single Redis that is down does: for a second after each failure, without asking
    /// it again meanwhile. The first connection given stays (this one or
    /// [`use_redis`]'s); later calls return `false`. The connection is used as it is
    /// ([`connect_redis_cluster`] makes one with timeouts and socket settings of its own).
    ///
    /// ```no_run
    /// # async fn f() -> redis::RedisResult<()> {
    /// let nodes = ["redis://10.0.0.1:6379/", "redis://10.0.0.2:6379/"];
    /// let client = redis::cluster::ClusterClient::new(nodes)?;
    /// resilience_runtime::ratelimit::use_redis_cluster(client.get_async_connection().await?);
    /// # Ok(()) }
    /// ```
    pub fn use_redis_cluster(conn: ClusterConnection) -> bool {
        CONN.set(RedisConn::Cluster(conn)).is_ok()
    }

    /// The Redis keys of a limit: its TAT, and the time of its last permit. The braces put
    /// both in one slot, the name's (`{name}`), so a cluster sends the script to that slot's
    /// master. A name that is empty or starts with `}` makes no hash tag there (Redis hashes
    /// the whole key when nothing stands between the braces, and the two keys would land in
    /// two slots: CROSSSLOT, every decision local): such a name follows a tag of its own,
    /// under a prefix no other name's keys have.
    fn keys(name: &str) -> (String, String) {
        let tat = if name.is_empty() || name.starts_with('}') {
            format!("resilience:rate!{{r}}{name}")
        } else {
            format!("resilience:rate:{{{name}}}")
        };
        let at = format!("{tat}:at");
        (tat, at)
    }

    /// What Redis decided.
    pub(super) enum Answer {
        /// A permit, after this wait; the TAT Redis set for it.
        Wait(Duration, u64),
        /// No permit within the wait allowed: one would have come after this wait.
        Refused(Duration),
        /// An error, or no answer within [`STORE_TIMEOUT`].
        Failed,
        /// No Redis was given.
        NoConnection,
        /// No answer within half the time the call had left (this wait), sooner than
        /// [`STORE_TIMEOUT`]: the rest is the local limit's.
        Slow(Duration),
    }

    /// The interval between permits in Redis's microseconds, rounded up (at least 1): a limit
    /// shared through Redis never lets more through than its rate, where rounding down would
    /// (600,000 a second would let a million through).
    pub(super) fn interval_micros(spec: &RateLimitSpec) -> u64 {
        let rate = u128::from(spec.rate.max(1));
        spec.per
            .as_micros()
            .div_ceil(rate)
            .clamp(1, u128::from(u64::MAX)) as u64
    }

    /// One decision of Redis, waited for at most `left` (the time before the call's deadline)
    /// and [`STORE_TIMEOUT`].
    pub(super) async fn reserve(
        name: &str,
        spec: &RateLimitSpec,
        allowed: Duration,
        left: Duration,
        ahead: Duration,
    ) -> Answer {
        let Some(conn) = CONN.get() else {
            return Answer::NoConnection;
        };
        let mut conn = conn.clone();
        let interval = interval_micros(spec);
        let tolerance = interval.saturating_mul(u64::from(spec.burst));
        let allowed = allowed.as_micros().min(u128::from(i64::MAX as u64)) as u64;
        let ahead = ahead.as_micros().min(u128::from(i64::MAX as u64)) as u64;
        let (tat, at) = keys(name);
        let call = async move {
            RESERVE
                .run_on::<(i64, i64)>(&mut conn, &[&tat, &at], |c| {
                    c.arg(interval).arg(tolerance).arg(allowed).arg(ahead);
                })
                .await
        };
        // Half the time left at most, so that a call short of time still decides locally with
        // the other half when Redis does not answer.
        let wait = STORE_TIMEOUT.min(left / 2);
        match tokio::time::timeout(wait, call).await {
            Ok(Ok((w, tat))) if w >= 0 => {
                Answer::Wait(Duration::from_micros(w as u64), tat.max(0) as u64)
            }
            Ok(Ok((w, _))) => Answer::Refused(Duration::from_micros((-1 - w) as u64)),
            Ok(Err(e)) => {
                tracing::debug!(rate_limit = name, error = %e, "rate limit: Redis failed");
                Answer::Failed
            }
            Err(_) if wait < STORE_TIMEOUT => Answer::Slow(wait),
            Err(_) => Answer::Failed,
        }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refused::Limited => "rate limited",
            Refused::Deadline => "deadline reached before a rate-limit permit",
        })
    }
}

/// The session's one call: a permit, or the call's error (counted and logged).
pub(crate) async fn admit(
    r: &'static RateLimiter,
    shared: &crate::registry::Resolved,
    deadline: Instant,
    started: Instant,
) -> Result<(), crate::error::Error> {
    match r.acquire_by(deadline).await {
        Ok(()) => Ok(()),
        Err(why) => Err(refused(r, shared, why, started)),
    }
}

/// What [`admit`] decides without waiting, for a local limit with a permit free now (or none
/// and no wait allowed); `None` when it takes a wait or the shared store.
#[inline]
pub(crate) fn admit_now(
    r: &'static RateLimiter,
    shared: &crate::registry::Resolved,
    now: Instant,
    started: Instant,
) -> Option<Result<(), crate::error::Error>> {
    if r.spec.store != RateLimitStore::Local {
        return None;
    }
    // Asked for no wait, a refusal reserves nothing: the full path can still wait for one.
    match r.reserve_local(now, Duration::ZERO) {
        Ok(_) => {
            r.admitted.incr();
            Some(Ok(()))
        }
        Err(why) if r.spec.max_wait.is_zero() => {
            r.rejected.fetch_add(1, Ordering::Relaxed);
            Some(Err(refused(r, shared, why, started)))
        }
        Err(_) => None,
    }
}

/// The error of a call its rate limit refused, counted and logged.
#[inline(never)]
fn refused(
    r: &'static RateLimiter,
    shared: &crate::registry::Resolved,
    why: Refused,
    started: Instant,
) -> crate::error::Error {
    use crate::error::{Error, ErrorKind};
    crate::counters::PolicyMetrics::incr(&shared.metrics.rejected_rate_limit);
    crate::telemetry::call_rejected_by_rate_limit(shared, started);
    crate::session::report_refused(shared.function, started.elapsed());
    let kind = match why {
        Refused::Limited => ErrorKind::RateLimited,
        Refused::Deadline => ErrorKind::DeadlineExceeded,
    };
    if crate::counters::warn_enabled!()
        && let Some(suppressed) = shared
            .metrics
            .refusal_logged(crate::counters::Refusals::RateLimit)
    {
        tracing::warn!(
            function = shared.function,
            policy = shared.policy,
            rate_limit = r.name(),
            suppressed,
            "{why}: call rejected"
        );
    }
    Error::new(kind)
        .with_class(Some(crate::classify::Class::Rejected), None)
        .with_elapsed(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: u32, burst: u32, max_wait_ms: u64) -> RateLimiter {
        RateLimiter::new(
            "t",
            RateLimitSpec {
                rate,
                per: Duration::from_secs(1),
                burst,
                max_wait: Duration::from_millis(max_wait_ms),
                store: RateLimitStore::Local,
            },
        )
    }

    /// Shared through Redis, the interval is counted in whole microseconds, rounded up: never
    /// more permits than the rate (600,000 a second once got a 1 µs interval, a million).
    #[cfg(feature = "redis")]
    #[test]
    fn a_shared_limits_interval_is_rounded_up_to_a_microsecond() {
        let spec = |rate, per| RateLimitSpec {
            rate,
            per,
            burst: 1,
            max_wait: Duration::ZERO,
            store: RateLimitStore::Redis,
        };
        let us = |rate, per| shared::interval_micros(&spec(rate, per));
        assert_eq!(us(600_000, Duration::from_secs(1)), 2);
        assert_eq!(us(150_000, Duration::from_secs(1)), 7);
        assert_eq!(us(1_000_000, Duration::from_secs(1)), 1);
        assert_eq!(us(1_000_000, Duration::from_millis(1)), 1);
        assert_eq!(us(40, Duration::from_secs(1)), 25_000);
        assert_eq!(us(1, Duration::from_secs(86_400)), 86_400_000_000);
        // Never more than the rate: the interval times the rate covers the period.
        for (rate, per_ms) in [(600_000, 1_000), (7, 1), (3, 10), (999_999, 86_400_000)] {
            let per = Duration::from_millis(per_ms);
            assert!(
                u128::from(us(rate, per)) * u128::from(rate) >= per.as_micros(),
                "{rate} per {per:?}"
            );
        }
    }

    /// A call whose clock reading is older than another's that already took a permit (its
    /// thread descheduled in between, longer than the burst) is not refused for that age: the
    /// limit, far from its rate, asks again with the clock read now.
    #[tokio::test(start_paused = true)]
    async fn a_stale_clock_reading_is_not_refused_for_its_age() {
        // One a millisecond, ten at once: the burst spans 10 ms.
        let l = limiter(1000, 10, 0);
        let stale = Instant::now();
        tokio::time::advance(Duration::from_millis(20)).await;
        assert_eq!(
            l.reserve_local(Instant::now(), Duration::ZERO),
            Ok(Duration::ZERO)
        );
        assert_eq!(l.reserve_local(stale, Duration::ZERO), Ok(Duration::ZERO));
        // At the rate, a refusal is still one.
        for _ in 0..8 {
            assert!(l.reserve_local(stale, Duration::ZERO).is_ok());
        }
        assert_eq!(
            l.reserve_local(stale, Duration::ZERO),
            Err(Refused::Limited)
        );
    }

    /// The same through Redis, which once said only "no": a call with less time left than
    /// `max_wait` was refused for its deadline even when the permit would have taken longer
    /// than `max_wait` (so its `fallback_on = [rate_limited]` did not apply). Redis now says
    /// how long the permit would have taken. Needs the Redis of `.ci/redis.sh` (or
    /// `RESILIENCE_REDIS_URL`); skipped, and says so, without one.
    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn a_shared_limit_tells_a_refusal_for_the_deadline_from_one_by_the_limit() {
        let url = std::env::var("RESILIENCE_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6399/".to_owned());
        let conn = async {
            let client = redis::Client::open(url.as_str())?;
            let mut conn = redis::aio::ConnectionManager::new(client).await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await?;
            Ok::<_, redis::RedisError>(conn)
        };
        let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(2), conn).await else {
            // Under `CI` (`.ci/test` starts Redis) a missing Redis fails, as every other
            // test that needs one does.
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but Redis at {url} is unreachable"
            );
            eprintln!("skipping: Redis at {url} is unreachable; start it with .ci/redis.sh");
            return;
        };
        assert!(use_redis(conn), "the first Redis given to this process");
        let shared = |name: &'static str, rate: u32| {
            RateLimiter::new(
                name,
                RateLimitSpec {
                    rate,
                    per: Duration::from_secs(1),
                    burst: 1,
                    max_wait: Duration::from_millis(500),
                    store: RateLimitStore::Redis,
                },
            )
        };
        let run = std::process::id();
        // One a second: the next permit in about a second, beyond max_wait.
        let slow = shared(Box::leak(format!("unit-slow-{run}").into_boxed_str()), 1);
        assert_eq!(
            slow.acquire_by(Instant::now() + Duration::from_secs(5))
                .await,
            Ok(())
        );
        let short = Instant::now() + Duration::from_millis(100);
        assert_eq!(slow.acquire_by(short).await, Err(Refused::Limited));
        // Four a second: the next permit in about 250 ms, within max_wait, after the 100 ms
        // the call has left.
        let quick = shared(Box::leak(format!("unit-quick-{run}").into_boxed_str()), 4);
        assert_eq!(
            quick
                .acquire_by(Instant::now() + Duration::from_secs(5))
                .await,
            Ok(())
        );
        let short = Instant::now() + Duration::from_millis(100);
        assert_eq!(quick.acquire_by(short).await, Err(Refused::Deadline));
        assert_eq!(slow.snapshot().local_fallbacks, 0, "Redis decided");
        assert_eq!(quick.snapshot().local_fallbacks, 0, "Redis decided");

        // The permits Redis gave are spent on the local limit too: Redis taken as down right
        // after a burst, the instance decides locally without a fresh burst on top ("nor
        // lets one instance exceed the whole limit").
        let burst = RateLimiter::new(
            Box::leak(format!("unit-burst-{run}").into_boxed_str()),
            RateLimitSpec {
                rate: 5,
                per: Duration::from_secs(1),
                burst: 5,
                max_wait: Duration::ZERO,
                store: RateLimitStore::Redis,
            },
        );
        let later = || Instant::now() + Duration::from_secs(10);
        for _ in 0..5 {
            assert_eq!(burst.acquire_by(later()).await, Ok(()));
        }
        assert_eq!(burst.snapshot().local_fallbacks, 0, "Redis decided");
        burst.store_failed();
        let mut local = 0;
        for _ in 0..5 {
            if burst.acquire_by(later()).await.is_ok() {
                local += 1;
            }
        }
        assert_eq!(burst.snapshot().local_fallbacks, 5, "decided locally");
        assert!(local <= 1, "{local} more on top of the 5 Redis gave");

        // So are the permits of calls dropped while Redis was still to answer them: Redis
        // spends them all the same (the script went out), and the instance, deciding locally
        // later, must not give them again.
        let cancelled = RateLimiter::new(
            Box::leak(format!("unit-cancelled-{run}").into_boxed_str()),
            RateLimitSpec {
                rate: 2,
                per: Duration::from_secs(3600),
                burst: 2,
                max_wait: Duration::ZERO,
                store: RateLimitStore::Redis,
            },
        );
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut admin = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(300)
            .arg("ALL")
            .query_async::<()>(&mut admin)
            .await
            .unwrap();
        for _ in 0..2 {
            let given_up =
                tokio::time::timeout(Duration::from_millis(50), cancelled.acquire_by(later()))
                    .await;
            assert!(given_up.is_err(), "still waiting for the paused Redis");
        }
        // The pause over, Redis has run both scripts.
        tokio::time::sleep(Duration::from_millis(400)).await;
        cancelled.store_failed();
        assert_eq!(
            cancelled.acquire_by(later()).await,
            Err(Refused::Limited),
            "the two permits Redis spent for the dropped calls are spent locally too"
        );

        // And the other way: the permits an instance gave locally while Redis was taken as
        // down are spent in Redis once it answers again, so that the instance takes no fresh
        // burst from Redis on top of them.
        let back_spec = RateLimitSpec {
            rate: 1,
            per: Duration::from_secs(10),
            burst: 5,
            max_wait: Duration::ZERO,
            store: RateLimitStore::Redis,
        };
        let back_name: &'static str = Box::leak(format!("unit-back-{run}").into_boxed_str());
        let back = RateLimiter::new(back_name, back_spec);
        back.store_failed();
        let mut local = 0;
        for _ in 0..5 {
            if back.acquire_by(later()).await.is_ok() {
                local += 1;
            }
        }
        assert_eq!(
            (local, back.snapshot().local_fallbacks),
            (5, 5),
            "its burst, locally"
        );
        tokio::time::sleep(STORE_DOWN_FOR + Duration::from_millis(100)).await;
        let mut from_redis = 0;
        for _ in 0..5 {
            if back.acquire_by(later()).await.is_ok() {
                from_redis += 1;
            }
        }
        assert_eq!(
            back.snapshot().local_fallbacks,
            5,
            "Redis decided, once back"
        );
        assert_eq!(
            from_redis, 0,
            "Redis gave {from_redis} more on top of the 5 the instance gave alone"
        );
        // Spent in Redis for every instance: another one (a limiter of the same name, on
        // the same Redis) gets no fresh burst either, though Redis refused every ask above
        // (a refusal stores what the instance gave alone too).
        let other = RateLimiter::new(back_name, back_spec);
        assert_eq!(
            other.acquire_by(later()).await,
            Err(Refused::Limited),
            "another instance took Redis's burst on top of the 5 given alone"
        );
        assert_eq!(other.snapshot().local_fallbacks, 0, "Redis decided");
        // Taken in by Redis: the next asks tell it nothing more (a call dropped while Redis
        // was to answer, spent locally, is not pushed into Redis).
        assert_eq!(back.alone.load(Ordering::Relaxed), 0, "taken in by Redis");
    }

    /// A shared limit deciding locally (Redis down) gives a permit free there at once: not
    /// counted as a wait, and not after a timer (the time spent asking counted as one).
    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn a_shared_limits_local_permit_free_now_is_given_at_once() {
        let l = RateLimiter::new(
            "unit-local-at-once",
            RateLimitSpec {
                rate: 10,
                per: Duration::from_secs(1),
                burst: 5,
                max_wait: Duration::from_secs(1),
                store: RateLimitStore::Redis,
            },
        );
        l.store_failed();
        for _ in 0..3 {
            assert_eq!(
                l.acquire_by(Instant::now() + Duration::from_secs(5)).await,
                Ok(())
            );
        }
        let s = l.snapshot();
        assert_eq!(
            (s.admitted, s.waited, s.local_fallbacks),
            (3, 0, 3),
            "{s:?}"
        );
    }

    /// The interval between permits is rounded up: never more than the rate.
    #[test]
    fn the_interval_is_rounded_up() {
        let spec = |rate, per| RateLimitSpec {
            rate,
            per,
            burst: 1,
            max_wait: Duration::ZERO,
            store: RateLimitStore::Local,
        };
        assert_eq!(spec(700_000, Duration::from_millis(1)).interval_nanos(), 2);
        assert_eq!(
            spec(3, Duration::from_secs(1)).interval_nanos(),
            333_333_334
        );
        assert_eq!(
            spec(10, Duration::from_secs(1)).interval_nanos(),
            100_000_000
        );
    }

    /// A caller that gives up its reservation gives it back only when it is still the last:
    /// else the next call would get the same slot as the one reserved after it, two calls at
    /// once under a limit of one every 100 ms.
    #[tokio::test(start_paused = true)]
    async fn a_reservation_given_back_never_doubles_a_later_ones_slot() {
        let l: &'static RateLimiter = Box::leak(Box::new(limiter(10, 1, 5000)));
        let start = Instant::now();
        assert_eq!(l.try_acquire(), Ok(()));
        let deadline = start + Duration::from_secs(10);
        let a = tokio::spawn(async move { l.acquire_by(deadline).await });
        let b = tokio::spawn(async move {
            l.acquire_by(deadline).await.unwrap();
            Instant::now()
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        a.abort();
        let _ = a.await;
        let c = l.acquire_by(deadline).await;
        assert_eq!(c, Ok(()));
        let c_at = Instant::now();
        let b_at = b.await.unwrap();
        assert_eq!(b_at - start, Duration::from_millis(200));
        assert!(
            c_at > b_at,
            "C at {:?}, B at {:?}",
            c_at - start,
            b_at - start
        );
    }

    /// A call with less time left than `max_wait` whose permit would take longer than
    /// `max_wait` anyway is rate limited (its `fallback_on = [rate_limited]` applies), not
    /// refused for its deadline; one whose permit would have come within `max_wait` is.
    #[tokio::test(start_paused = true)]
    async fn limited_beyond_max_wait_is_rate_limited_whatever_the_time_left() {
        let l = limiter(1, 1, 500);
        assert_eq!(l.try_acquire(), Ok(()));
        let soon = Instant::now() + Duration::from_millis(100);
        assert_eq!(l.acquire_by(soon).await, Err(Refused::Limited));
        let l = RateLimiter::new(
            "t",
            RateLimitSpec {
                rate: 4,
                per: Duration::from_secs(1),
                burst: 1,
                max_wait: Duration::from_millis(500),
                store: RateLimitStore::Local,
            },
        );
        assert_eq!(l.try_acquire(), Ok(()));
        // The next permit comes in 250 ms: within max_wait, beyond the 100 ms left.
        let soon = Instant::now() + Duration::from_millis(100);
        assert_eq!(l.acquire_by(soon).await, Err(Refused::Deadline));
    }

    /// A burst of more permits than the clock's nanoseconds can count at the limit's rate
    /// still ends: the permit after the burst waits.
    #[tokio::test(start_paused = true)]
    async fn a_burst_of_centuries_still_limits() {
        let l = RateLimiter::new(
            "t",
            RateLimitSpec {
                rate: 1,
                per: Duration::from_secs(86_400),
                burst: 300_000,
                max_wait: Duration::ZERO,
                store: RateLimitStore::Local,
            },
        );
        let now = Instant::now();
        let mut admitted = 0u32;
        while admitted <= 300_001 && l.reserve_local(now, Duration::ZERO).is_ok() {
            admitted += 1;
        }
        assert!(admitted < 300_001, "never refused");
        // 2^62 ns of tolerance at one permit a day: about 53,000 permits at once.
        assert!(admitted > 50_000, "{admitted}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_sustained_rate() {
        let r = limiter(10, 3, 0);
        for _ in 0..3 {
            assert_eq!(r.try_acquire(), Ok(()));
        }
        assert_eq!(r.try_acquire(), Err(Refused::Limited));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(r.try_acquire(), Ok(()));
        assert_eq!(r.try_acquire(), Err(Refused::Limited));
        // A quiet second gives the whole burst back, and no more.
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..3 {
            assert_eq!(r.try_acquire(), Ok(()));
        }
        assert_eq!(r.try_acquire(), Err(Refused::Limited));
    }

    #[tokio::test(start_paused = true)]
    async fn waits_its_turn_within_max_wait_and_the_deadline() {
        let r = limiter(10, 1, 250);
        let far = Instant::now() + Duration::from_secs(10);
        let t = Instant::now();
        r.acquire_by(far).await.unwrap();
        r.acquire_by(far).await.unwrap();
        assert_eq!(t.elapsed(), Duration::from_millis(100));
        r.acquire_by(far).await.unwrap();
        assert_eq!(t.elapsed(), Duration::from_millis(200));
        // Three waiting at once: 100, 200, then 300 ms > max_wait, refused at once.
        let t = Instant::now();
        let (a, b, c) = tokio::join!(r.acquire_by(far), r.acquire_by(far), r.acquire_by(far));
        assert_eq!((a, b), (Ok(()), Ok(())));
        assert_eq!(c, Err(Refused::Limited));
        assert_eq!(t.elapsed(), Duration::from_millis(200));
        // A wait that would end after the deadline is refused at once, as the deadline.
        let t = Instant::now();
        let near = t + Duration::from_millis(50);
        assert_eq!(r.acquire_by(near).await, Err(Refused::Deadline));
        assert_eq!(t.elapsed(), Duration::ZERO);
        let s = r.snapshot();
        assert_eq!((s.admitted, s.waited, s.rejected), (1, 4, 2));
    }

    #[test]
    fn specs_are_checked_with_the_rule_book() {
        let ok = RateLimitSpec {
            rate: 1,
            per: Duration::from_secs(1),
            burst: 1,
            max_wait: Duration::ZERO,
            store: RateLimitStore::Local,
        };
        assert!(ok.validate().is_ok());
        assert!(RateLimitSpec { rate: 0, ..ok }.validate().is_err());
        assert!(RateLimitSpec { burst: 0, ..ok }.validate().is_err());
        let e = RateLimiter::try_new(
            "t",
            RateLimitSpec {
                per: Duration::ZERO,
                ..ok
            },
        )
        .unwrap_err();
        assert!(e.0.contains("per = 0ms"), "{e}");
    }
}
