//! Counters per policy, readable as a snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one policy.
#[derive(Debug, Default)]
pub struct PolicyMetrics {
    pub(crate) successful_without_retry: AtomicU64,
    pub(crate) successful_with_retry: AtomicU64,
    pub(crate) failed_without_retry: AtomicU64,
    pub(crate) failed_with_retry: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) rejected_breaker: AtomicU64,
    pub(crate) rejected_budget: AtomicU64,
    pub(crate) rejected_bulkhead: AtomicU64,
}

/// A copy of a policy's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicySnapshot {
    pub successful_without_retry: u64,
    pub successful_with_retry: u64,
    pub failed_without_retry: u64,
    pub failed_with_retry: u64,
    pub retries: u64,
    pub rejected_breaker: u64,
    pub rejected_budget: u64,
    pub rejected_bulkhead: u64,
}

impl PolicyMetrics {
    pub fn snapshot(&self) -> PolicySnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PolicySnapshot {
            successful_without_retry: l(&self.successful_without_retry),
            successful_with_retry: l(&self.successful_with_retry),
            failed_without_retry: l(&self.failed_without_retry),
            failed_with_retry: l(&self.failed_with_retry),
            retries: l(&self.retries),
            rejected_breaker: l(&self.rejected_breaker),
            rejected_budget: l(&self.rejected_budget),
            rejected_bulkhead: l(&self.rejected_bulkhead),
        }
    }

    pub(crate) fn incr(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
