//! The retry budget against the retry-storm anti-pattern, and under contention.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use resilience_runtime::budget::{Budget, BudgetSpec};

/// What a downstream that answers nothing sees when a client sends `per_sec` calls a second for
/// `secs` seconds and each failed call would retry twice (3 attempts), as (first attempts,
/// attempts in all). `budget: None` is a client without a budget.
async fn dead_downstream(budget: Option<&Budget>, per_sec: u64, secs: u64) -> (u64, u64) {
    let tick = Duration::from_secs(1) / per_sec as u32;
    let (mut calls, mut sent) = (0, 0);
    for _ in 0..per_sec * secs {
        calls += 1;
        sent += 1;
        if let Some(b) = budget {
            b.deposit();
        }
        for _retry in 0..2 {
            if budget.is_some_and(|b| !b.withdraw()) {
                break;
            }
            sent += 1;
        }
        tokio::time::advance(tick).await;
    }
    (calls, sent)
}

#[tokio::test(start_paused = true)]
async fn a_dead_downstream_sees_1_2x_with_the_default_budget_not_3x() {
    let (calls, sent) = dead_downstream(None, 100, 60).await;
    assert_eq!(calls, 6000);
    assert_eq!(
        sent,
        3 * calls,
        "without a budget, every call is sent 3 times"
    );

    let budget = Budget::new(BudgetSpec::DEFAULT);
    let (calls, sent) = dead_downstream(Some(&budget), 100, 60).await;
    let retries = sent - calls;
    // 10% of first attempts plus 10 a second: at 100 calls a second, at most 20%.
    assert!(
        sent * 10 <= calls * 12,
        "amplification {} > 1.2",
        sent as f64 / calls as f64
    );
    // And the budget does grant what it promises: the ratio at least.
    assert!(
        retries * 10 >= calls,
        "only {retries} retries for {calls} calls"
    );
    let s = budget.snapshot();
    assert_eq!(s.deposits, calls);
    assert_eq!(s.withdrawals, retries);
}

#[tokio::test(start_paused = true)]
async fn under_heavier_load_the_floor_matters_less() {
    // At 1000 calls a second the floor adds 1%: about 1.11x.
    let budget = Budget::new(BudgetSpec::DEFAULT);
    let (calls, sent) = dead_downstream(Some(&budget), 1000, 60).await;
    assert!(
        sent * 100 <= calls * 111,
        "amplification {} > 1.11",
        sent as f64 / calls as f64
    );
}

#[tokio::test(start_paused = true)]
async fn a_quiet_client_keeps_every_retry_thanks_to_the_floor() {
    // One call a second retries twice: 2 retries a second, under the floor of 10.
    let budget = Budget::new(BudgetSpec::DEFAULT);
    let (calls, sent) = dead_downstream(Some(&budget), 1, 60).await;
    assert_eq!((calls, sent), (60, 180));
}

#[tokio::test(start_paused = true)]
async fn over_any_window_retries_stay_under_ratio_plus_floor() {
    // A bursty client: 500 calls in one second, then nothing for 4 s, repeated. Slide a
    // 10-second window over the record and check the promise at every second.
    let spec = BudgetSpec {
        ratio: 0.2,
        min_per_sec: 2,
    };
    let budget = Budget::new(spec);
    let mut per_sec = Vec::new();
    for s in 0..60 {
        let (mut calls, mut retries) = (0u64, 0u64);
        if s % 5 == 0 {
            for _ in 0..500 {
                calls += 1;
                budget.deposit();
                for _ in 0..2 {
                    if !budget.withdraw() {
                        break;
                    }
                    retries += 1;
                }
            }
        }
        per_sec.push((calls, retries));
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    for end in 1..=per_sec.len() {
        let w = &per_sec[end.saturating_sub(10)..end];
        let calls: u64 = w.iter().map(|c| c.0).sum();
        let retries: u64 = w.iter().map(|c| c.1).sum();
        let allowance = (calls as f64 * spec.ratio) as u64 + u64::from(spec.min_per_sec) * 10;
        assert!(
            retries <= allowance,
            "seconds {}..{end}: {retries} retries > {allowance}",
            end.saturating_sub(10)
        );
    }
}

/// Many tasks spending one budget at once: no retry is granted twice, none beyond the allowance,
/// and every deposit counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contention_never_grants_beyond_the_allowance() {
    const TASKS: u64 = 8;
    const CALLS: u64 = 5_000;
    let spec = BudgetSpec {
        ratio: 0.1,
        min_per_sec: 50,
    };
    let started = std::time::Instant::now();
    let budget = Arc::new(Budget::new(spec));
    let deposited = Arc::new(AtomicU64::new(0));
    let granted = Arc::new(AtomicU64::new(0));
    // The floor of every second the test may span.
    let floor = move |secs: u64| u64::from(spec.min_per_sec) * (secs + 1);
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (budget, deposited, granted) = (budget.clone(), deposited.clone(), granted.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = 0u64;
            for i in 0..CALLS {
                // Counted before the deposit, so the check below never undercounts deposits.
                deposited.fetch_add(1, Ordering::SeqCst);
                budget.deposit();
                for _ in 0..2 {
                    if !budget.withdraw() {
                        break;
                    }
                    mine += 1;
                    let g = granted.fetch_add(1, Ordering::SeqCst) + 1;
                    let d = deposited.load(Ordering::SeqCst);
                    let allowance = d / 10 + floor(started.elapsed().as_secs());
                    assert!(g <= allowance, "{g} granted after {d} deposits");
                }
                if i % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            mine
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    // Spend what is left: the grand total is then exactly the allowance.
    while budget.withdraw() {
        total += 1;
    }
    let calls = TASKS * CALLS;
    let s = budget.snapshot();
    assert_eq!(s.deposits, calls);
    assert_eq!(s.withdrawals, total);
    let secs = started.elapsed().as_secs();
    if secs == 0 {
        // All of it within one second: one floor, and nothing has expired.
        assert_eq!(total, calls / 10 + floor(0));
    } else {
        assert!(total <= calls / 10 + floor(secs));
    }
}

/// Many tasks racing for the floor of one second get exactly `min_per_sec` retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contention_on_the_floor_grants_it_exactly() {
    const TASKS: usize = 8;
    let spec = BudgetSpec {
        ratio: 0.0,
        min_per_sec: 1_000,
    };
    for _round in 0..20 {
        let started = std::time::Instant::now();
        let budget = Arc::new(Budget::new(spec));
        let go = Arc::new(tokio::sync::Barrier::new(TASKS));
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let (budget, go) = (budget.clone(), go.clone());
            tasks.push(tokio::spawn(async move {
                go.wait().await;
                (0..500).filter(|_| budget.withdraw()).count() as u64
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        let secs = started.elapsed().as_secs();
        if secs == 0 {
            assert_eq!(total, u64::from(spec.min_per_sec));
        } else {
            assert!(total <= u64::from(spec.min_per_sec) * (secs + 1));
        }
        assert_eq!(budget.snapshot().refused, TASKS as u64 * 500 - total);
    }
}
