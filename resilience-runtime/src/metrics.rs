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

pub use crate::breaker::BreakerSnapshot;
pub use crate::budget::BudgetSnapshot;
pub use crate::bulkhead::BulkheadSnapshot;
use crate::registry;

pub use crate::counters::{PolicyMetrics, PolicySnapshot};

/// The counters of the function whose full path is `name` (`crate::users::Primary::lookup`),
/// or else the sum over every function of the policy `name`, once one has been called.
pub fn policy(name: &str) -> Option<PolicySnapshot> {
    registry::find_metrics(name)
}

/// The counters of every annotated function that has been called, by full path (module, impl
/// type and name), sorted.
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

/// The state of the budget named `name` (a budget the policy does not name is the function's
/// own, listed under the function's full path).
pub fn budget(name: &str) -> Option<BudgetSnapshot> {
    registry::find_budget(name).map(|b| b.snapshot())
}

/// The state of the bulkhead named `name`.
pub fn bulkhead(name: &str) -> Option<BulkheadSnapshot> {
    registry::find_bulkhead(name).map(|b| b.snapshot())
}

/// The state of the rate limit named `name` (or private to the function of that path).
pub fn rate_limit(name: &str) -> Option<crate::ratelimit::RateLimitSnapshot> {
    registry::find_rate_limit(name).map(|r| r.snapshot())
}

/// The state of the adaptive concurrency limit named `name` (or private to the function of
/// that path): its limit now, calls in flight, admitted, refused, decreases.
pub fn concurrency_limit(name: &str) -> Option<crate::concurrency::ConcurrencySnapshot> {
    registry::find_concurrency_limit(name).map(|c| c.snapshot())
}
