//! Shared state by name, process-wide: two functions naming the same breaker share one breaker.
//!
//! Each annotated function resolves its state once (a `OnceLock` in its [`PolicyState`]); the
//! hot path then reads a `&'static` and never touches the registry's lock.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::breaker::{Breaker, BreakerSpec};
use crate::budget::{Budget, BudgetSpec};
use crate::bulkhead::{Bulkhead, BulkheadSpec};
use crate::concurrency::{ConcurrencyLimit, ConcurrencySpec};
use crate::counters::PolicyMetrics;
use crate::policy::Policy;
use crate::ratelimit::{RateLimitSpec, RateLimiter};
use resilience_spec::packed::{Packed, Unpacked};

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
static RATE_LIMITS: Map<RateLimiter> = OnceLock::new();
static CONCURRENCY_LIMITS: Map<ConcurrencyLimit> = OnceLock::new();

/// The adaptive concurrency limit registered under `name`, created from `spec` on first use.
///
/// # Panics
///
/// On first use, if `spec` is invalid ([`ConcurrencySpec::validate`]).
pub fn concurrency_limit(name: &'static str, spec: ConcurrencySpec) -> &'static ConcurrencyLimit {
    intern(
        &CONCURRENCY_LIMITS,
        "concurrency_limit",
        name,
        || ConcurrencyLimit::new(name, spec),
        |c| c.spec() == spec,
    )
}

pub(crate) fn find_concurrency_limit(name: &str) -> Option<&'static ConcurrencyLimit> {
    find(&CONCURRENCY_LIMITS, name)
}

/// The rate limit registered under `name`, created from `spec` on first use.
///
/// # Panics
///
/// On first use, if `spec` is invalid ([`RateLimitSpec::validate`]).
pub fn rate_limit(name: &'static str, spec: RateLimitSpec) -> &'static RateLimiter {
    intern(
        &RATE_LIMITS,
        "rate_limit",
        name,
        || RateLimiter::new(name, spec),
        |r| r.spec() == spec,
    )
}

pub(crate) fn find_rate_limit(name: &str) -> Option<&'static RateLimiter> {
    find(&RATE_LIMITS, name)
}

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

/// The counters of the function whose full path is `function`, under the policy `policy`.
pub fn metrics(function: &'static str, policy: &'static str) -> &'static PolicyMetrics {
    intern(
        &METRICS,
        "metrics",
        function,
        || PolicyMetrics::new(policy),
        |_| true,
    )
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

/// The counters of the function `name`, or the sum over the functions of the policy `name`.
pub(crate) fn find_metrics(name: &str) -> Option<crate::metrics::PolicySnapshot> {
    let g = lock(&METRICS);
    if let Some(m) = g.get(name) {
        return Some(m.snapshot());
    }
    let mut found = None;
    for m in g.values().filter(|m| m.policy == name) {
        found = Some(found.unwrap_or_default() + m.snapshot());
    }
    found
}

pub(crate) fn all_breakers() -> Vec<(&'static str, &'static Breaker)> {
    all(&BREAKERS)
}

pub(crate) fn all_metrics() -> Vec<(&'static str, &'static PolicyMetrics)> {
    all(&METRICS)
}

/// The shared state one annotated function uses, resolved on its first call.
///
/// State the policy names (`breaker = "pg"`) is shared through the registry; state it does not
/// name (an inline table without `name`, the default budget) is this function's own, held
/// here, so two functions never share what their author did not share.
#[derive(Debug)]
pub struct PolicyState {
    /// What `#[resilient]` compiled, for [`PolicyState::compiled`]: unpacked on the first call.
    source: Option<Source>,
    unpacked: OnceLock<(Policy, Option<Unpacked>)>,
    resolved: OnceLock<Resolved>,
    /// The policy a run-time override put in place of the compiled one.
    pub(crate) current: arc_swap::ArcSwapOption<&'static Policy>,
}

/// A compiled function's policy as the macro left it: the function's path (module and name),
/// its policy packed into one string, and the function that finds its full path.
#[derive(Debug, Clone, Copy)]
struct Source {
    function: &'static str,
    packed: &'static str,
    locate: fn() -> &'static str,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Resolved {
    /// The policy as compiled (run-time overrides aside).
    pub compiled: &'static Policy,
    /// The compiled policy did not unpack: every call fails with this (never, when the macro
    /// and the runtime come from the same release, as their exact version pins make sure).
    pub broken: Option<&'static Unpacked>,
    /// The function's full path: module, impl type and name.
    pub function: &'static str,
    /// The policy's name: `[policies.NAME]`, or the function's path when inline only.
    pub policy: &'static str,
    pub budget: Option<&'static Budget>,
    pub breaker: Option<&'static Breaker>,
    pub bulkhead: Option<&'static Bulkhead>,
    pub rate_limit: Option<&'static RateLimiter>,
    pub concurrency: Option<&'static ConcurrencyLimit>,
    pub metrics: &'static PolicyMetrics,
    // telemetry (issue 12): the function's metric keys, built once.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub telemetry: &'static crate::telemetry::Instruments,
}

impl PolicyState {
    #[allow(clippy::new_without_default)]
    /// Nothing resolved yet.
    pub const fn new() -> PolicyState {
        PolicyState {
            source: None,
            unpacked: OnceLock::new(),
            resolved: OnceLock::new(),
            current: arc_swap::ArcSwapOption::const_empty(),
        }
    }

    /// The state of a function `#[resilient]` compiled: its policy `packed` into one string
    /// (see `resilience_spec::packed`), unpacked on the function's first call. One string
    /// literal is far cheaper for the compiler to check, function by function, than the policy
    /// written out as a struct expression. `locate` gives the type name of a type the function
    /// nests (`__ResilienceHere`), from which its full path is found on the first call.
    pub const fn compiled(
        function: &'static str,
        packed: &'static str,
        locate: fn() -> &'static str,
    ) -> PolicyState {
        let mut state = PolicyState::new();
        state.source = Some(Source {
            function,
            packed,
            locate,
        });
        state
    }

    /// The shared state of a function built with [`compiled`](Self::compiled), its policy
    /// unpacked on the first call.
    #[inline]
    pub(crate) fn resolve_compiled(&'static self) -> &'static Resolved {
        match self.resolved.get() {
            Some(r) => r,
            None => self.resolve_first(),
        }
    }

    #[cold]
    fn resolve_first(&'static self) -> &'static Resolved {
        let (policy, broken) = self.unpacked.get_or_init(|| match self.source {
            Some(s) => match Packed::unpack(s.packed) {
                Ok(p) => (Policy::unpacked(s.function, p, Some(s.locate)), None),
                Err(e) => (
                    Policy {
                        function: s.function,
                        locate: Some(s.locate),
                        ..Policy::DEFAULT
                    },
                    Some(e),
                ),
            },
            // Not compiled: resolved with the policy handed to `Session::begin` instead.
            None => (Policy::DEFAULT, None),
        });
        self.resolve_with(policy, broken.as_ref())
    }

    pub(crate) fn resolve(&'static self, policy: &'static Policy) -> &'static Resolved {
        self.resolve_with(policy, None)
    }

    fn resolve_with(
        &'static self,
        policy: &'static Policy,
        broken: Option<&'static Unpacked>,
    ) -> &'static Resolved {
        self.resolved.get_or_init(|| {
            let function = policy.locate.map_or(policy.function, |f| {
                let located = function_path(f());
                let path = match resilience_spec::paths::from_type_name(policy.function, located) {
                    std::borrow::Cow::Borrowed(path) => path,
                    // Once per function, for the life of the process.
                    std::borrow::Cow::Owned(path) => Box::leak(path.into_boxed_str()),
                };
                shares_path(path, resilience_spec::paths::owner_identity(located));
                path
            });
            let policy_name = if policy.name.is_empty() {
                function
            } else {
                policy.name
            };
            crate::overrides::register(function, policy_name, policy, &self.current);
            Resolved {
                compiled: policy,
                broken,
                function,
                policy: policy_name,
                // State private to a function is registered under its path: functions that
                // share a path (methods of two impls of one type at different generic
                // arguments) share it, as they share their overrides and metrics, so that
                // `breakers::force_open(path)` reaches every one of them.
                budget: policy
                    .budget
                    .map(|(n, s)| budget(if n.is_empty() { function } else { n }, s)),
                breaker: policy
                    .breaker
                    .map(|(n, s)| breaker(if n.is_empty() { function } else { n }, s)),
                bulkhead: policy
                    .bulkhead
                    .map(|(n, s)| bulkhead(if n.is_empty() { function } else { n }, s)),
                rate_limit: policy
                    .rate_limit
                    .map(|(n, s)| rate_limit(if n.is_empty() { function } else { n }, s)),
                concurrency: policy
                    .concurrency
                    .map(|(n, s)| concurrency_limit(if n.is_empty() { function } else { n }, s)),
                metrics: metrics(function, policy_name),
                // telemetry (issue 12)
                telemetry: crate::telemetry::instruments(policy, function, policy_name),
            }
        })
    }
}

/// Says, once per pair, when a function takes a path another function of another type
/// already has (methods of `stripe::Client` and `adyen::Client` in one module: the path keeps
/// a type's last segment): they share what is registered under it.
fn shares_path(path: &'static str, identity: String) {
    static OWNERS: Mutex<BTreeMap<&'static str, String>> = Mutex::new(BTreeMap::new());
    let mut owners = OWNERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match owners.get(path) {
        Some(first) if *first != identity => tracing::warn!(
            path,
            first = %first,
            second = %identity,
            "two functions of different types share the path: their unnamed breaker, budget, \
             bulkhead and limits, their metrics and their overrides are one; name the state \
             (breaker = {{ name = … }}) or move one into a module of its own"
        ),
        Some(_) => {}
        None => {
            owners.insert(path, identity);
        }
    }
}

/// The path the type name of the marker type nested in a `#[resilient]` function gives
/// (`crate::users::Primary::lookup::{{closure}}::__ResilienceHere`):
/// `crate::users::Primary::lookup`, `<crate::Svc as crate::Api>::get`. The runtime names the
/// function from it and the function's module (`resilience_spec::paths`). A path without the
/// marker is returned as it is.
pub fn function_path(nested_item_type_name: &'static str) -> &'static str {
    let Some(mut s) = nested_item_type_name.strip_suffix("::__ResilienceHere") else {
        return nested_item_type_name;
    };
    // The async body's closure scopes.
    while let Some(rest) = s.strip_suffix("::{{closure}}") {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_paths_keep_the_impl_type() {
        assert_eq!(
            function_path("app::users::Primary::lookup::{{closure}}::__ResilienceHere"),
            "app::users::Primary::lookup"
        );
        assert_eq!(
            function_path(
                "<app::Svc as app::Api>::get::{{closure}}::{{closure}}::__ResilienceHere"
            ),
            "<app::Svc as app::Api>::get"
        );
        // A path without the marker, as a hand-written policy's `locate` gives it.
        assert_eq!(function_path("plain"), "plain");
        assert_eq!(function_path("app::Svc::get"), "app::Svc::get");
    }

    fn here() -> &'static str {
        "registry::tests::compiled"
    }

    #[test]
    fn a_compiled_policy_is_unpacked_once_with_every_value() {
        use resilience_spec::packed::{PackedBreaker, PackedJitter, PackedKey};
        static PACKED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        static STATE: std::sync::OnceLock<PolicyState> = std::sync::OnceLock::new();
        let packed = PACKED.get_or_init(|| {
            Packed {
                name: "",
                method: crate::Method::Put,
                timeout: std::time::Duration::from_millis(1500),
                deadline: std::time::Duration::from_secs(9),
                max_attempts: 4,
                backoff_constant: true,
                backoff_initial: std::time::Duration::from_millis(20),
                backoff_max: std::time::Duration::from_millis(80),
                backoff_multiplier_milli: 3000,
                jitter: PackedJitter::Equal,
                retry_connect: true,
                retry_reset: false,
                retry_timeout: true,
                retry_statuses: vec![503],
                key: PackedKey::Auto,
                idempotent: false,
                max_retry_after: std::time::Duration::from_secs(5),
                budget: Some(("", 0.3, 7)),
                breaker: Some((
                    "registry-tests-breaker",
                    PackedBreaker {
                        failure_rate: 0.4,
                        min_calls: 6,
                        window: 12,
                        open_for: std::time::Duration::from_secs(3),
                        half_open_calls: 2,
                        window_for: std::time::Duration::ZERO,
                        slow_call_duration: std::time::Duration::ZERO,
                        slow_call_rate: 1.0,
                    },
                )),
                bulkhead: None,
                rate_limit: None,
                concurrency: None,
                hedge: None,
                unseen: crate::Method::Other,
                sends_seen: false,
                connect_timeout: Some(std::time::Duration::from_millis(700)),
            }
            .pack()
        });
        let state = STATE.get_or_init(|| PolicyState::compiled("registry::f", packed, here));
        let r = state.resolve_compiled();
        assert!(std::ptr::eq(r, state.resolve_compiled()), "resolved once");
        assert!(r.broken.is_none());
        // The function's full path comes from its locator; an inline policy is named after it.
        assert_eq!(
            (r.function, r.policy),
            ("registry::tests::compiled", "registry::tests::compiled")
        );
        let p = r.compiled;
        assert_eq!(p.function, "registry::f");
        assert_eq!(p.method, crate::Method::Put);
        assert_eq!(
            (p.timeout, p.deadline),
            (
                std::time::Duration::from_millis(1500),
                std::time::Duration::from_secs(9)
            )
        );
        assert_eq!(p.max_attempts, 4);
        assert_eq!(
            p.connect_timeout,
            Some(std::time::Duration::from_millis(700))
        );
        assert_eq!(p.backoff.kind, crate::BackoffKind::Constant);
        assert_eq!(p.backoff.jitter, crate::Jitter::Equal);
        assert_eq!(p.backoff.multiplier_milli, 3000);
        assert_eq!(p.retry_on.statuses, &[503]);
        assert!(p.retry_on.connect && !p.retry_on.reset && p.retry_on.timeout);
        assert_eq!(p.idempotency_key, crate::KeySource::Auto);
        assert_eq!(
            p.budget.map(|(n, b)| (n, b.ratio, b.min_per_sec)),
            Some(("", 0.3, 7))
        );
        let (name, b) = p.breaker.expect("a breaker");
        assert_eq!(
            (
                name,
                b.failure_rate,
                b.min_calls,
                b.window,
                b.half_open_calls
            ),
            ("registry-tests-breaker", 0.4, 6, 12, 2)
        );
        assert_eq!(b.open_for, std::time::Duration::from_secs(3));
        assert!(p.bulkhead.is_none() && p.hedge.is_none() && p.rate_limit.is_none());
        // The shared state it names is made from the unpacked settings.
        assert_eq!(r.breaker.map(|b| b.name()), Some("registry-tests-breaker"));
        assert!(r.budget.is_some());
    }

    #[test]
    fn a_policy_that_does_not_unpack_fails_every_call_with_an_error() {
        static STATE: PolicyState = PolicyState::compiled("registry::g", "rp2,damaged", here);
        for _ in 0..2 {
            let mut s =
                crate::session::Session::begin_compiled(&STATE, crate::__private::KeyArg::Auto);
            let e = s.take_refusal().expect("refused");
            assert!(e.to_string().contains("does not unpack"), "{e}");
        }
        assert!(crate::session::Session::refused_compiled(&STATE).is_none());
    }
}
