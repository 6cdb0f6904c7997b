//! The counters of one annotated function, and [`Striped`], the counter for what every call
//! adds to.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Stripes of a [`Striped`] counter.
const STRIPES: usize = 8;

/// A counter that calls on many threads add to at once (a function's successes, a budget's
/// first attempts, a bulkhead's slots granted): one cache line per stripe, each thread adding
/// to its own stripe (threads take the stripes in turn), the stripes summed when read. One
/// `AtomicU64` that every call adds to moves its cache line from core to core on every call:
/// on two cores, about 65 ns a call.
#[derive(Debug, Default)]
pub(crate) struct Striped([Stripe; STRIPES]);

/// Two cache lines: a neighbouring line is fetched with its pair.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe(AtomicU64);

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's stripe (`usize::MAX` until its first add).
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

#[inline]
fn stripe() -> usize {
    STRIPE.with(|s| {
        let i = s.get();
        if i < STRIPES {
            return i;
        }
        let i = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
        s.set(i);
        i
    })
}

impl Striped {
    /// Adds one.
    #[inline]
    pub(crate) fn incr(&self) {
        self.0[stripe()].0.fetch_add(1, Ordering::Relaxed);
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
    /// Retries refused by the retry budget.
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
    /// went to.
    #[test]
    fn a_striped_count_is_exact_across_threads() {
        let c = Striped::default();
        std::thread::scope(|s| {
            for _ in 0..STRIPES + 3 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        c.incr();
                    }
                });
            }
        });
        assert_eq!(c.get(), (STRIPES as u64 + 3) * 10_000);
        // Spread over the stripes: the threads took them in turn.
        assert!(
            c.0.iter()
                .filter(|s| s.0.load(Ordering::Relaxed) > 0)
                .count()
                > 1
        );
    }
}
