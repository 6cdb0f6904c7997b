//! The happy path allocates nothing per call: the policy is static data, shared state is
//! resolved once per function, and a call that succeeds first time touches no heap.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use resilience_runtime::{Error, resilient};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Only the thread that runs the calls counts: the test harness's own thread allocates
    /// now and then while it waits, and that is not the code under test.
    static COUNTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(|c| c.get()) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[resilient(method = GET, timeout = "1s")]
async fn defaults(n: u64) -> Result<u64, Error> {
    Ok(n + 1)
}

#[resilient(
    method = GET,
    timeout = "1s",
    breaker = { failure_rate = 0.5, min_calls = 10, window = 20, open_for = "1s", half_open_calls = 2 },
    bulkhead = { max_concurrent = 8 },
    rate_limit = { rate = 1000000, burst = 1000000, max_wait = "10ms" },
)]
async fn everything(n: u64) -> Result<u64, Error> {
    Ok(n + 1)
}

#[resilient(method = GET, timeout = "1s", hedge(delay = "50ms"))]
async fn hedged(n: u64) -> Result<u64, Error> {
    Ok(n + 1)
}

#[test]
fn no_allocation_per_call_on_the_happy_path() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    // The runtime is current-thread: every task of these calls runs on this thread.
    COUNTING.with(|c| c.set(true));
    rt.block_on(async {
        // First calls register the shared state (one allocation each, once per process).
        assert_eq!(defaults(1).await.unwrap(), 2);
        assert_eq!(everything(1).await.unwrap(), 2);
        for (name, f) in [
            ("defaults", 0),
            ("budget + breaker + bulkhead + rate limit", 1),
        ] {
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            for i in 0..1000u64 {
                let r = match f {
                    0 => defaults(i).await,
                    1 => everything(i).await,
                    _ => hedged(i).await,
                };
                assert_eq!(r.unwrap(), i + 1);
            }
            let per_call = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / 1000.0;
            assert_eq!(per_call, 0.0, "{name}: {per_call} allocations per call");
        }
    });
}
