//! The bulkhead under contention: never more than N in flight, every call accounted for.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use resilience_runtime::bulkhead::{Bulkhead, BulkheadSpec};
use tokio::sync::Barrier;

/// Counts the calls inside the bulkhead and remembers the most at once.
#[derive(Default)]
struct Gauge {
    now: AtomicU32,
    max: AtomicU32,
}

impl Gauge {
    fn enter(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn never_more_than_max_concurrent_in_flight() {
    const N: u32 = 5;
    const TASKS: u64 = 32;
    const CALLS: u64 = 200;
    let bulkhead = Arc::new(Bulkhead::new(BulkheadSpec {
        max_concurrent: N,
        max_wait: Duration::from_millis(1),
    }));
    let gauge = Arc::new(Gauge::default());
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (b, gauge) = (bulkhead.clone(), gauge.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut full) = (0u64, 0u64);
            for _ in 0..CALLS {
                match b.acquire().await {
                    Ok(_slot) => {
                        gauge.enter();
                        assert!(b.in_flight() <= N);
                        tokio::task::yield_now().await;
                        gauge.leave();
                        ok += 1;
                    }
                    Err(_) => full += 1,
                }
            }
            (ok, full)
        }));
    }
    let (mut ok, mut full) = (0, 0);
    for t in tasks {
        let (o, f) = t.await.unwrap();
        ok += o;
        full += f;
    }
    let s = bulkhead.snapshot();
    assert!(gauge.max.load(Ordering::SeqCst) <= N);
    assert_eq!(ok + full, TASKS * CALLS);
    assert_eq!((s.admitted, s.rejected), (ok, full));
    assert_eq!(s.in_flight, 0);
}

/// With no wait, a burst of callers gets exactly N slots while the holders keep them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_gets_exactly_n_slots_and_the_rest_fail_fast() {
    const N: u32 = 4;
    const TASKS: usize = 16;
    let bulkhead = Arc::new(Bulkhead::new(BulkheadSpec {
        max_concurrent: N,
        max_wait: Duration::ZERO,
    }));
    for round in 0..20 {
        let start = Arc::new(Barrier::new(TASKS));
        let tried = Arc::new(Barrier::new(TASKS));
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let (b, start, tried) = (bulkhead.clone(), start.clone(), tried.clone());
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                let slot = b.acquire().await;
                tried.wait().await;
                slot.is_ok()
            }));
        }
        let mut admitted = 0;
        for t in tasks {
            admitted += u32::from(t.await.unwrap());
        }
        assert_eq!(admitted, N, "round {round}");
        assert_eq!(bulkhead.in_flight(), 0);
    }
}

/// Callers that can wait long enough all get through, N at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiting_callers_all_get_a_slot_in_turn() {
    const N: u32 = 2;
    const TASKS: u64 = 20;
    let bulkhead = Arc::new(Bulkhead::new(BulkheadSpec {
        max_concurrent: N,
        max_wait: Duration::from_secs(10),
    }));
    let gauge = Arc::new(Gauge::default());
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (b, gauge, done) = (bulkhead.clone(), gauge.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let _slot = b.acquire().await.expect("10 s is plenty");
            gauge.enter();
            tokio::time::sleep(Duration::from_millis(2)).await;
            gauge.leave();
            done.fetch_add(1, Ordering::SeqCst);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), TASKS);
    assert!((1..=N).contains(&gauge.max.load(Ordering::SeqCst)));
    assert_eq!(bulkhead.snapshot().rejected, 0);
}
