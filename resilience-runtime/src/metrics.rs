//! Counters per policy, breaker, budget and bulkhead, readable from code by name.
//!
//! ```
//! use resilience_runtime::metrics;
//!
//! for (name, m) in metrics::all() {
//!     println!("{name}: {} retries, {} refused by the breaker", m.retries, m.rejected_breaker);
//! }
//! if let Some(b) = metrics::breaker("pg") {
//!     println!("pg breaker is {}, opened {} times", b.state, b.opened);
//! }
//! ```
//!
//! Reading takes the registry's lock (never held on the hot path) and copies the counters;
//! each counter is exact, a snapshot of several is not taken at one instant.

use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::breaker::BreakerSnapshot;
pub use crate::budget::BudgetSnapshot;
pub use crate::bulkhead::BulkheadSnapshot;
use crate::registry;

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

/// The counters of the policy named `name`, once one of its functions has been called.
pub fn policy(name: &str) -> Option<PolicySnapshot> {
    registry::find_metrics(name).map(PolicyMetrics::snapshot)
}

/// The counters of every policy that has been called, sorted by name.
pub fn all() -> Vec<(&'static str, PolicySnapshot)> {
    registry::all_metrics()
        .into_iter()
        .map(|(n, m)| (n, m.snapshot()))
        .collect()
}

/// The state and counters of the breaker named `name`, once a call has used it.
pub fn breaker(name: &str) -> Option<BreakerSnapshot> {
    registry::find_breaker(name).map(|b| b.snapshot())
}

/// The state and counters of every breaker in use, sorted by name.
pub fn breakers() -> Vec<(&'static str, BreakerSnapshot)> {
    registry::all_breakers()
        .into_iter()
        .map(|(n, b)| (n, b.snapshot()))
        .collect()
}

/// The state of the budget named `name` (a policy's own budget goes by the policy's name).
pub fn budget(name: &str) -> Option<BudgetSnapshot> {
    registry::find_budget(name).map(|b| b.snapshot())
}

/// The state of the bulkhead named `name`.
pub fn bulkhead(name: &str) -> Option<BulkheadSnapshot> {
    registry::find_bulkhead(name).map(|b| b.snapshot())
}
