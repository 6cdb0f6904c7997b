//! Shared state by name, process-wide: two functions naming the same breaker share one breaker.
//!
//! Each annotated function resolves its state once (a `OnceLock` in its [`PolicyState`]); the
//! hot path then reads a `&'static` and never touches the registry's lock.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::breaker::{Breaker, BreakerSpec};
use crate::budget::{Budget, BudgetSpec};
use crate::bulkhead::{Bulkhead, BulkheadSpec};
use crate::metrics::PolicyMetrics;
use crate::policy::Policy;

type Map<T> = OnceLock<Mutex<HashMap<&'static str, &'static T>>>;

fn lock<T>(map: &'static Map<T>) -> MutexGuard<'static, HashMap<&'static str, &'static T>> {
    // A panic while registering (an invalid spec) leaves the map itself consistent.
    map.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// The value under `name`, made (and leaked: it lives as long as the process) on first use.
/// A later registration with other settings keeps the first ones, with a warning.
fn intern<T: Send + Sync + 'static>(
    map: &'static Map<T>,
    kind: &'static str,
    name: &'static str,
    make: impl FnOnce() -> T,
    same: impl FnOnce(&T) -> bool,
) -> &'static T {
    let mut g = lock(map);
    if let Some(t) = g.get(name) {
        if !same(t) {
            tracing::warn!(
                kind,
                name,
                "registered again with different settings: the first settings stay"
            );
        }
        return t;
    }
    let t: &'static T = Box::leak(Box::new(make()));
    g.insert(name, t);
    t
}

fn find<T>(map: &'static Map<T>, name: &str) -> Option<&'static T> {
    lock(map).get(name).copied()
}

fn all<T>(map: &'static Map<T>) -> Vec<(&'static str, &'static T)> {
    let mut v: Vec<_> = lock(map).iter().map(|(n, t)| (*n, *t)).collect();
    v.sort_unstable_by_key(|(n, _)| *n);
    v
}

static BUDGETS: Map<Budget> = OnceLock::new();
static BREAKERS: Map<Breaker> = OnceLock::new();
static BULKHEADS: Map<Bulkhead> = OnceLock::new();
static METRICS: Map<PolicyMetrics> = OnceLock::new();

/// The budget registered under `name`, created from `spec` on first use.
///
/// # Panics
///
/// On first use, if `spec` is invalid ([`BudgetSpec::validate`]).
pub fn budget(name: &'static str, spec: BudgetSpec) -> &'static Budget {
    intern(
        &BUDGETS,
        "budget",
        name,
        || Budget::new(spec),
        |b| b.spec() == spec,
    )
}

/// The breaker registered under `name`, created from `spec` on first use.
///
/// # Panics
///
/// On first use, if `spec` is invalid ([`BreakerSpec::validate`]).
pub fn breaker(name: &'static str, spec: BreakerSpec) -> &'static Breaker {
    intern(
        &BREAKERS,
        "breaker",
        name,
        || Breaker::new(name, spec),
        |b| b.spec() == spec,
    )
}

/// The bulkhead registered under `name`, created from `spec` on first use.
///
/// # Panics
///
/// On first use, if `spec` is invalid ([`BulkheadSpec::validate`]).
pub fn bulkhead(name: &'static str, spec: BulkheadSpec) -> &'static Bulkhead {
    intern(
        &BULKHEADS,
        "bulkhead",
        name,
        || Bulkhead::new(spec),
        |b| b.spec() == spec,
    )
}

/// The counters of the policy named `name`.
pub fn metrics(name: &'static str) -> &'static PolicyMetrics {
    intern(&METRICS, "metrics", name, PolicyMetrics::default, |_| true)
}

pub(crate) fn find_budget(name: &str) -> Option<&'static Budget> {
    find(&BUDGETS, name)
}

pub(crate) fn find_breaker(name: &str) -> Option<&'static Breaker> {
    find(&BREAKERS, name)
}

pub(crate) fn find_bulkhead(name: &str) -> Option<&'static Bulkhead> {
    find(&BULKHEADS, name)
}

pub(crate) fn find_metrics(name: &str) -> Option<&'static PolicyMetrics> {
    find(&METRICS, name)
}

pub(crate) fn all_breakers() -> Vec<(&'static str, &'static Breaker)> {
    all(&BREAKERS)
}

pub(crate) fn all_metrics() -> Vec<(&'static str, &'static PolicyMetrics)> {
    all(&METRICS)
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
    // telemetry (issue 12): the function's metric keys, built once.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub telemetry: &'static crate::telemetry::Instruments,
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
            // telemetry (issue 12)
            telemetry: crate::telemetry::instruments(policy),
        })
    }
}
