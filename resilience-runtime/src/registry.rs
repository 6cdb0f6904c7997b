//! Shared state by name, process-wide: two functions naming the same breaker share one breaker.
//!
//! Each annotated function resolves its state once (a `OnceLock` in its [`PolicyState`]); the
//! hot path then reads a `&'static` and never touches the registry's lock.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use crate::breaker::{Breaker, BreakerSpec};
use crate::budget::{Budget, BudgetSpec};
use crate::bulkhead::{Bulkhead, BulkheadSpec};
use crate::metrics::PolicyMetrics;
use crate::policy::Policy;

fn intern<T: Send + Sync + 'static>(
    map: &'static OnceLock<Mutex<HashMap<&'static str, &'static T>>>,
    name: &'static str,
    make: impl FnOnce() -> T,
) -> &'static T {
    let map = map.get_or_init(Default::default);
    let mut g = map.lock().unwrap_or_else(|e| e.into_inner());
    g.entry(name).or_insert_with(|| Box::leak(Box::new(make())))
}

static BUDGETS: OnceLock<Mutex<HashMap<&'static str, &'static Budget>>> = OnceLock::new();
static BREAKERS: OnceLock<Mutex<HashMap<&'static str, &'static Breaker>>> = OnceLock::new();
static BULKHEADS: OnceLock<Mutex<HashMap<&'static str, &'static Bulkhead>>> = OnceLock::new();
static METRICS: OnceLock<Mutex<HashMap<&'static str, &'static PolicyMetrics>>> = OnceLock::new();

/// The budget registered under `name`, created from `spec` on first use.
pub fn budget(name: &'static str, spec: BudgetSpec) -> &'static Budget {
    intern(&BUDGETS, name, || Budget::new(spec))
}

/// The breaker registered under `name`, created from `spec` on first use.
pub fn breaker(name: &'static str, spec: BreakerSpec) -> &'static Breaker {
    intern(&BREAKERS, name, || Breaker::new(name, spec))
}

/// The bulkhead registered under `name`, created from `spec` on first use.
pub fn bulkhead(name: &'static str, spec: BulkheadSpec) -> &'static Bulkhead {
    intern(&BULKHEADS, name, || Bulkhead::new(spec))
}

/// The counters of the policy named `name`.
pub fn metrics(name: &'static str) -> &'static PolicyMetrics {
    intern(&METRICS, name, PolicyMetrics::default)
}

/// The shared state one annotated function uses, resolved on its first call.
#[derive(Debug)]
pub struct PolicyState {
    resolved: OnceLock<Resolved>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Resolved {
    pub budget: Option<&'static Budget>,
    pub breaker: Option<&'static Breaker>,
    pub bulkhead: Option<&'static Bulkhead>,
    pub metrics: &'static PolicyMetrics,
}

impl PolicyState {
    #[allow(clippy::new_without_default)]
    pub const fn new() -> PolicyState {
        PolicyState {
            resolved: OnceLock::new(),
        }
    }

    pub(crate) fn resolve(&'static self, policy: &'static Policy) -> Resolved {
        *self.resolved.get_or_init(|| Resolved {
            budget: policy
                .budget
                .map(|(n, s)| budget(if n.is_empty() { policy.name } else { n }, s)),
            breaker: policy.breaker.map(|(n, s)| breaker(n, s)),
            bulkhead: policy.bulkhead.map(|(n, s)| bulkhead(n, s)),
            metrics: metrics(policy.name),
        })
    }
}
