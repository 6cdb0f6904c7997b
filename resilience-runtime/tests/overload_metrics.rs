//! Shared state by name, and reading it back from code.

use std::time::Duration;

use resilience_runtime::breaker::{BreakerSpec, BreakerState};
use resilience_runtime::budget::BudgetSpec;
use resilience_runtime::bulkhead::BulkheadSpec;
use resilience_runtime::metrics::{self, PolicySnapshot};
use resilience_runtime::registry;

#[test]
fn one_name_one_instance() {
    let spec = BreakerSpec::DEFAULT;
    let a = registry::breaker("metrics-shared", spec);
    let b = registry::breaker("metrics-shared", spec);
    assert!(std::ptr::eq(a, b));
    // Other settings under a taken name keep the first ones.
    let c = registry::breaker("metrics-shared", BreakerSpec { window: 30, ..spec });
    assert!(std::ptr::eq(a, c));
    assert_eq!(c.spec(), spec);
    assert!(!std::ptr::eq(a, registry::breaker("metrics-other", spec)));

    let m = registry::metrics("metrics::f", "metrics-policy");
    assert!(std::ptr::eq(
        m,
        registry::metrics("metrics::f", "metrics-policy")
    ));
    assert!(!std::ptr::eq(
        m,
        registry::metrics("metrics::g", "metrics-policy")
    ));
}

#[test]
fn unknown_names_read_as_none() {
    assert_eq!(metrics::policy("metrics-never-called"), None);
    assert_eq!(metrics::breaker("metrics-never-called"), None);
    assert_eq!(metrics::budget("metrics-never-called"), None);
    assert_eq!(metrics::bulkhead("metrics-never-called"), None);
}

#[test]
fn breaker_state_and_transitions_read_by_name() {
    let spec = BreakerSpec {
        failure_rate: 1.0,
        min_calls: 2,
        window: 2,
        open_for: Duration::from_secs(60),
        half_open_calls: 1,
        ..BreakerSpec::DEFAULT
    };
    let b = registry::breaker("metrics-breaker", spec);
    for _ in 0..2 {
        let p = b.try_acquire().unwrap();
        b.on_failure(p);
    }
    assert!(b.try_acquire().is_err());
    let s = metrics::breaker("metrics-breaker").unwrap();
    assert_eq!(s.state, BreakerState::Open);
    assert_eq!(
        (s.opened, s.half_opened, s.closed, s.rejected),
        (1, 0, 0, 1)
    );
}

#[tokio::test]
async fn budget_and_bulkhead_read_by_name() {
    let budget = registry::budget(
        "metrics-budget",
        BudgetSpec {
            ratio: 0.5,
            min_per_sec: 0,
        },
    );
    budget.deposit();
    budget.deposit();
    assert!(budget.withdraw());
    let s = metrics::budget("metrics-budget").unwrap();
    assert_eq!((s.deposits, s.withdrawals, s.available), (2, 1, 0));

    let bulkhead = registry::bulkhead(
        "metrics-bulkhead",
        BulkheadSpec {
            max_concurrent: 3,
            max_wait: Duration::ZERO,
        },
    );
    let _slot = bulkhead.acquire().await.unwrap();
    let s = metrics::bulkhead("metrics-bulkhead").unwrap();
    assert_eq!((s.max_concurrent, s.in_flight, s.admitted), (3, 1, 1));
}

#[test]
fn functions_are_listed_by_path_and_summed_by_policy() {
    registry::metrics("metrics-b", "metrics-policy-ab");
    registry::metrics("metrics-a", "metrics-policy-ab");
    let all = metrics::all();
    let names: Vec<_> = all.iter().map(|(n, _)| *n).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);
    assert!(names.contains(&"metrics-a") && names.contains(&"metrics-b"));
    assert_eq!(
        metrics::policy("metrics-a"),
        Some(PolicySnapshot::default())
    );
    assert_eq!(
        metrics::policy("metrics-policy-ab"),
        Some(PolicySnapshot::default())
    );
}
