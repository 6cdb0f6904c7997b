//! The counters of one annotated function, and [`Striped`], the counter for what every call
//! adds to.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Stripes a thread holds alone while it lives (the first threads to count; a tokio runtime's
/// workers): its adds are a plain load and store, no locked instruction. A locked add waits
/// for every store the thread has pending (a call's whole session, just written): about
/// 5 ns of a call that does little else.
const OWNED: usize = 8;
/// Stripes the threads beyond those share, in turn: atomic adds.
const SHARED: usize = 8;
pub(crate) const STRIPES: usize = OWNED + SHARED;

/// A counter that calls on many threads add to at once (a function's successes, a budget's
/// first attempts, a bulkhead's slots granted): one cache line per stripe, each thread adding
/// to its own stripe, the stripes summed when read. One `AtomicU64` that every call adds to
/// moves its cache line from core to core on every call: on two cores, about 65 ns a call.
#[derive(Debug, Default)]
pub(crate) struct Striped([Stripe; STRIPES]);

/// Two cache lines: a neighbouring line is fetched with its pair.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe(AtomicU64);

/// The owned stripes free to be taken, one bit each.
static FREE: AtomicUsize = AtomicUsize::new((1 << OWNED) - 1);
static NEXT_SHARED: AtomicUsize = AtomicUsize::new(0);

/// A thread's stripe: below `OWNED` one it holds alone, given back when the thread ends.
struct Slot(Cell<usize>);

impl Drop for Slot {
    fn drop(&mut self) {
        let i = self.0.get();
        if i < OWNED {
            // Release: the next thread to take the stripe sees every add this one made.
            FREE.fetch_or(1 << i, Ordering::Release);
        }
    }
}

thread_local! {
    /// This thread's stripe (`usize::MAX` until its first add).
    static SLOT: Slot = const { Slot(Cell::new(usize::MAX)) };
}

/// This thread's stripe, `0..STRIPES` (below `OWNED`: one it holds alone).
#[inline]
pub(crate) fn stripe() -> usize {
    SLOT.try_with(|s| {
        let i = s.0.get();
        if i < STRIPES {
            return i;
        }
        let i = take_stripe();
        s.0.set(i);
        i
    })
    // The thread is ending (its slot already given back): a shared stripe.
    .unwrap_or(OWNED)
}

/// A free owned stripe, or else the next shared one.
#[cold]
fn take_stripe() -> usize {
    let mut free = FREE.load(Ordering::Relaxed);
    while free != 0 {
        let i = free.trailing_zeros() as usize;
        // Acquire: the adds of the thread that gave the stripe back are seen.
        match FREE.compare_exchange_weak(
            free,
            free & !(1 << i),
            Ordering::Acquire,
            Ordering::Relaxed,
        ) {
            Ok(_) => return i,
            Err(now) => free = now,
        }
    }
    OWNED + NEXT_SHARED.fetch_add(1, Ordering::Relaxed) % SHARED
}

impl Striped {
    /// Adds one.
    #[inline]
    pub(crate) fn incr(&self) {
        let i = stripe();
        let s = &self.0[i].0;
        if i < OWNED {
            // No other thread writes this stripe while this one holds it.
            s.store(s.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
        } else {
            s.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The count: every add made before this read (and any made during it).
    pub(crate) fn get(&self) -> u64 {
        self.0
            .iter()
            .fold(0u64, |n, s| n.wrapping_add(s.0.load(Ordering::Relaxed)))
    }
}

/// Live counters of one annotated function.
#[derive(Debug, Default)]
pub struct PolicyMetrics {
    /// The policy the function uses (its own path when inline only).
    pub(crate) policy: &'static str,
    /// Every call's success, on every thread: striped.
    pub(crate) successful_without_retry: Striped,
    pub(crate) successful_with_retry: AtomicU64,
    pub(crate) failed_without_retry: AtomicU64,
    pub(crate) failed_with_retry: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) rejected_breaker: AtomicU64,
    // Calls an open breaker refused before their first attempt: each is one `rejected_breaker`
    // and one `failed_without_retry` in the snapshot, one atomic add on the refusal's path.
    pub(crate) refused_by_breaker: AtomicU64,
    pub(crate) rejected_budget: AtomicU64,
    pub(crate) rejected_bulkhead: AtomicU64,
    pub(crate) rejected_rate_limit: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    /// The warn events of this function's refusals, by kind ([`Refusals`]): at most one a
    /// second each.
    pub(crate) refusal_logs: [LogThrottle; 4],
}

/// The kinds of refusal whose warn events are throttled apart ([`PolicyMetrics::refusal_logs`]).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Refusals {
    Breaker = 0,
    Bulkhead = 1,
    RateLimit = 2,
    ConcurrencyLimit = 3,
}

impl PolicyMetrics {
    /// Whether a refusal of `kind` logs its warn event now, and how many refusals of that kind
    /// went unlogged since the last one: at most one event a second per function and kind (a
    /// breaker open under 2,000 calls a second wrote 2,000 warn lines a second). Asked only
    /// where [`warn_enabled!`] says the event would go out: without a subscriber or logger no
    /// clock is read. The metrics count every refusal.
    #[inline]
    pub(crate) fn refusal_logged(&self, kind: Refusals) -> Option<u64> {
        self.refusal_logs[kind as usize].admit()
    }
}

/// Whether a warn event written where this expands may go out: asked where the event is
/// (its module is its target, which a filter may name), or a `log` logger takes warnings
/// (`tracing`'s `log` feature sends events to one when no `tracing` subscriber is set; with
/// one set, this only reads the clock in vain).
macro_rules! warn_enabled {
    () => {
        tracing::enabled!(tracing::Level::WARN) || log::max_level() >= log::LevelFilter::Warn
    };
}
pub(crate) use warn_enabled;

/// At most one event a second; the ones held back in between are counted.
#[derive(Debug, Default)]
pub(crate) struct LogThrottle {
    /// When the next event may go out, in milliseconds after [`log_origin`] (0: at once).
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogThrottle {
    /// `Some(n)`: log now, `n` held back since the last event.
    #[cold]
    #[inline(never)]
    pub(crate) fn admit(&self) -> Option<u64> {
        // The tokio clock: a test's paused clock moves it.
        let now = tokio::time::Instant::now()
            .saturating_duration_since(log_origin())
            .as_millis() as u64;
        let next = self.next_ms.load(Ordering::Relaxed);
        // A clock behind the one that set `next` by more than the gap (a test's paused clock,
        // of another runtime than the first one logged on): not held back for good.
        let behind = next > now.saturating_add(1000);
        if (now >= next || behind)
            && self
                .next_ms
                .compare_exchange(next, now + 1000, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

fn log_origin() -> tokio::time::Instant {
    static ORIGIN: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(tokio::time::Instant::now)
}

/// A copy of a policy's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PolicySnapshot {
    /// Calls that succeeded on their first attempt.
    pub successful_without_retry: u64,
    /// Calls that succeeded after at least one retry.
    pub successful_with_retry: u64,
    /// Calls that failed after a single attempt.
    pub failed_without_retry: u64,
    /// Calls that failed after retrying.
    pub failed_with_retry: u64,
    /// Retries made.
    pub retries: u64,
    /// Attempts refused by an open circuit breaker.
    pub rejected_breaker: u64,
    /// Retries and hedges refused by the retry budget (a call whose hedge was refused and that
    /// then succeeded is counted here and as a success).
    pub rejected_budget: u64,
    /// Calls refused by a full bulkhead.
    pub rejected_bulkhead: u64,
    /// Calls refused by the client-side rate limit.
    pub rejected_rate_limit: u64,
    /// Calls their caller stopped waiting for before they ended (its own timeout, a
    /// `select!` that took another branch, a dropped task): whatever they were doing then
    /// (waiting for a slot, an attempt, a backoff) was dropped with them.
    pub cancelled: u64,
}

impl std::ops::Add for PolicySnapshot {
    type Output = PolicySnapshot;

    fn add(self, o: PolicySnapshot) -> PolicySnapshot {
        PolicySnapshot {
            successful_without_retry: self.successful_without_retry + o.successful_without_retry,
            successful_with_retry: self.successful_with_retry + o.successful_with_retry,
            failed_without_retry: self.failed_without_retry + o.failed_without_retry,
            failed_with_retry: self.failed_with_retry + o.failed_with_retry,
            retries: self.retries + o.retries,
            rejected_breaker: self.rejected_breaker + o.rejected_breaker,
            rejected_budget: self.rejected_budget + o.rejected_budget,
            rejected_bulkhead: self.rejected_bulkhead + o.rejected_bulkhead,
            rejected_rate_limit: self.rejected_rate_limit + o.rejected_rate_limit,
            cancelled: self.cancelled + o.cancelled,
        }
    }
}

impl PolicyMetrics {
    pub(crate) fn new(policy: &'static str) -> PolicyMetrics {
        PolicyMetrics {
            policy,
            ..PolicyMetrics::default()
        }
    }

    /// The policy these counters belong to.
    pub fn policy(&self) -> &'static str {
        self.policy
    }

    /// The counters now.
    pub fn snapshot(&self) -> PolicySnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let refused = l(&self.refused_by_breaker);
        PolicySnapshot {
            successful_without_retry: self.successful_without_retry.get(),
            successful_with_retry: l(&self.successful_with_retry),
            failed_without_retry: l(&self.failed_without_retry) + refused,
            failed_with_retry: l(&self.failed_with_retry),
            retries: l(&self.retries),
            rejected_breaker: l(&self.rejected_breaker) + refused,
            rejected_budget: l(&self.rejected_budget),
            rejected_bulkhead: l(&self.rejected_bulkhead),
            rejected_rate_limit: l(&self.rejected_rate_limit),
            cancelled: l(&self.cancelled),
        }
    }

    pub(crate) fn incr(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Adds from more threads than stripes, at once: every one counted, whichever stripe it
    /// went to (one held alone or a shared one).
    #[test]
    fn a_striped_count_is_exact_across_threads() {
        let c = Striped::default();
        let threads = STRIPES + 3;
        let all_started = std::sync::Barrier::new(threads);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    // Each holds its stripe before any ends: more threads than owned
                    // stripes, so some share.
                    c.incr();
                    all_started.wait();
                    for _ in 1..10_000 {
                        c.incr();
                    }
                });
            }
        });
        assert_eq!(c.get(), threads as u64 * 10_000);
        // Spread over the stripes, the shared ones among them.
        assert!(
            c.0.iter()
                .filter(|s| s.0.load(Ordering::Relaxed) > 0)
                .count()
                > 1
        );
        assert!(c.0[OWNED..].iter().any(|s| s.0.load(Ordering::Relaxed) > 0));
    }

    /// Threads that come and go, more of them than owned stripes: each one's stripe is given
    /// back when it ends and taken by a later one, which adds on top of what it holds.
    #[test]
    fn a_stripe_given_back_keeps_its_count() {
        let c = Striped::default();
        let threads = 3 * STRIPES;
        for _ in 0..threads {
            std::thread::scope(|s| {
                s.spawn(|| {
                    for _ in 0..1_000 {
                        c.incr();
                    }
                });
            });
        }
        assert_eq!(c.get(), threads as u64 * 1_000);
    }
}
