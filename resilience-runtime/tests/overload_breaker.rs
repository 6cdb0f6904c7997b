//! The circuit breaker under contention: exact probe counts and exact transition counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use resilience_runtime::breaker::{Breaker, BreakerSpec, BreakerState};
use tokio::sync::Barrier;

const OPEN_FOR: Duration = Duration::from_millis(2);

fn trip(b: &Breaker) {
    while b.state() == BreakerState::Closed {
        let p = b.try_acquire().unwrap();
        b.on_failure(p);
    }
}

/// Many tasks arrive together at a breaker whose `open_for` has just passed: exactly
/// `half_open_calls` of them become probes, the others are refused while the probes are out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_open_admits_exactly_half_open_calls_probes() {
    const TASKS: usize = 16;
    const ROUNDS: u64 = 50;
    let spec = BreakerSpec {
        failure_rate: 0.5,
        min_calls: 2,
        window: 4,
        open_for: OPEN_FOR,
        half_open_calls: 3,
        ..BreakerSpec::DEFAULT
    };
    let breaker = Arc::new(Breaker::new("contended-probes", spec));
    for round in 0..ROUNDS {
        trip(&breaker);
        tokio::time::sleep(OPEN_FOR * 2).await;
        let start = Arc::new(Barrier::new(TASKS));
        let tried = Arc::new(Barrier::new(TASKS));
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let (b, start, tried) = (breaker.clone(), start.clone(), tried.clone());
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                let permit = b.try_acquire();
                // Hold the probes until everyone has asked.
                tried.wait().await;
                match permit {
                    Ok(p) => {
                        assert!(p.is_probe());
                        b.on_success(p);
                        1
                    }
                    Err(_) => 0,
                }
            }));
        }
        let mut probes = 0;
        for t in tasks {
            probes += t.await.unwrap();
        }
        assert_eq!(probes, spec.half_open_calls, "round {round}");
        assert_eq!(breaker.state(), BreakerState::Closed, "round {round}");
    }
    let s = breaker.snapshot();
    assert_eq!(
        (s.opened, s.half_opened, s.closed),
        (ROUNDS, ROUNDS, ROUNDS)
    );
    assert_eq!(
        s.rejected,
        ROUNDS * (TASKS as u64 - u64::from(spec.half_open_calls))
    );
}

/// Tasks hammer one breaker with random outcomes while it cycles through its states. Every
/// transition is won by exactly one caller, so the counters stay consistent with the final
/// state; every refusal is counted once; probes never exceed their slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hammered_breaker_keeps_exact_counts() {
    hammer(BreakerSpec {
        failure_rate: 0.5,
        min_calls: 5,
        window: 10,
        open_for: Duration::from_millis(1),
        half_open_calls: 2,
        ..BreakerSpec::DEFAULT
    })
    .await;
}

/// The same with a window too long for the atomic word, recorded behind its lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hammered_breaker_with_a_long_window_keeps_exact_counts() {
    hammer(BreakerSpec {
        failure_rate: 0.4,
        min_calls: 50,
        window: 100,
        open_for: Duration::from_millis(1),
        half_open_calls: 3,
        ..BreakerSpec::DEFAULT
    })
    .await;
}

async fn hammer(spec: BreakerSpec) {
    const TASKS: u64 = 8;
    // Run until the breaker has closed again this many times (or 10 s, to stay bounded).
    const CLOSINGS: u64 = 30;
    let started = std::time::Instant::now();
    let breaker = Arc::new(Breaker::new("hammered", spec));
    let refused = Arc::new(AtomicU64::new(0));
    let probes = Arc::new(AtomicU64::new(0));
    let probes_released = Arc::new(AtomicU64::new(0));
    let probes_succeeded = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for seed in 0..TASKS {
        let b = breaker.clone();
        let counters = (
            refused.clone(),
            probes.clone(),
            probes_released.clone(),
            probes_succeeded.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let (refused, probes, released, succeeded) = counters;
            let mut rng = fastrand::Rng::with_seed(seed);
            for i in 0u64.. {
                if i % 64 == 0
                    && (b.snapshot().closed >= CLOSINGS
                        || started.elapsed() > Duration::from_secs(10))
                {
                    break;
                }
                match b.try_acquire() {
                    Err(_) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(p) => {
                        let probe = p.is_probe();
                        if probe {
                            probes.fetch_add(1, Ordering::Relaxed);
                        }
                        if rng.u8(..4) == 0 {
                            tokio::task::yield_now().await;
                        }
                        // A sick downstream that is getting better: probes mostly succeed.
                        let roll = match (probe, rng.u8(..20)) {
                            (true, r) if r < 17 => 0,
                            (true, r) => r,
                            (false, r) => r,
                        };
                        match roll {
                            0..=9 => {
                                if probe {
                                    succeeded.fetch_add(1, Ordering::Relaxed);
                                }
                                b.on_success(p);
                            }
                            10..=17 => b.on_failure(p),
                            18 => {
                                if probe {
                                    released.fetch_add(1, Ordering::Relaxed);
                                }
                                b.on_ignored(p);
                            }
                            _ => {
                                if probe {
                                    released.fetch_add(1, Ordering::Relaxed);
                                }
                                drop(p);
                            }
                        }
                    }
                }
                if i % 128 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let s = breaker.snapshot();
    let h = u64::from(spec.half_open_calls);
    assert!(
        s.closed >= CLOSINGS,
        "the breaker did not cycle enough: {s:?}"
    );
    assert_eq!(s.rejected, refused.load(Ordering::Relaxed));
    // Open is entered `opened` times and left only for half-open.
    assert_eq!(
        s.opened - s.half_opened,
        u64::from(s.state == BreakerState::Open),
        "{s:?}"
    );
    // Half-open is left for closed at most as often as it was entered.
    assert!(s.closed <= s.half_opened, "{s:?}");
    // Closed is left only for open: (closings + the start) - times left = 1 if closed now.
    assert!(s.opened + u64::from(s.state == BreakerState::Closed) > s.closed);
    // Each half-open spell admits at most `h` probes, plus one for each slot given back.
    let probes = probes.load(Ordering::Relaxed);
    assert!(
        probes <= s.half_opened * h + probes_released.load(Ordering::Relaxed),
        "{probes} probes in {} half-open spells",
        s.half_opened
    );
    // And closes only after `h` probes succeeded.
    assert!(probes_succeeded.load(Ordering::Relaxed) >= s.closed * h);
}

/// A breaker shared by the tasks of a dead downstream opens once and fails the rest fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_downstream_opens_the_breaker_once() {
    const TASKS: u64 = 8;
    const CALLS: u64 = 1_000;
    let spec = BreakerSpec {
        open_for: Duration::from_secs(60),
        ..BreakerSpec::DEFAULT
    };
    let breaker = Arc::new(Breaker::new("dead", spec));
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (b, sent) = (breaker.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..CALLS {
                if let Ok(p) = b.try_acquire() {
                    sent.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                    b.on_failure(p);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let s = breaker.snapshot();
    assert_eq!(s.state, BreakerState::Open);
    assert_eq!(s.opened, 1);
    let sent = sent.load(Ordering::Relaxed);
    assert_eq!(sent + s.rejected, TASKS * CALLS);
    // The window trips at min_calls reports; only calls already in flight got through after.
    assert!(
        sent < u64::from(spec.min_calls) + TASKS,
        "{sent} calls reached the dead downstream"
    );
}
