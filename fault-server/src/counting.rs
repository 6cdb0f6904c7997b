//! A global allocator that counts, per thread, the allocations and bytes asked for: the one
//! the allocation test and the allocation benchmark both use.
//!
//! Per thread, so that a loopback server running on another thread is not counted: the
//! contenders run on a current-thread runtime, so every allocation of theirs (and of reqwest's
//! connection tasks) happens on the measuring thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, Ordering};

/// Install with `#[global_allocator] static A: Counting = Counting;`, then read
/// [`snapshot`] on the thread that runs the code under test.
#[derive(Debug)]
pub struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
}

/// The bytes allocated and not yet freed, by every thread of the process.
static LIVE: AtomicI64 = AtomicI64::new(0);

/// The most `LIVE` reached since the start or the last [`reset_peak`].
static PEAK: AtomicI64 = AtomicI64::new(0);

fn note(size: usize) {
    let live = LIVE.fetch_add(size as i64, Ordering::Relaxed) + size as i64;
    PEAK.fetch_max(live, Ordering::Relaxed);
    // `try_with`: an allocation during thread teardown is simply not counted.
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
    let _ = BYTES.try_with(|c| c.set(c.get() + size as u64));
}

// SAFETY: every method forwards to `System` unchanged; the counting touches only
// const-initialised thread-locals without destructors, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as above.
        let moved = unsafe { System.realloc(ptr, layout, new_size) };
        // Failed, the old block is still there; else it is gone.
        let freed = if moved.is_null() {
            new_size
        } else {
            layout.size()
        };
        LIVE.fetch_sub(freed as i64, Ordering::Relaxed);
        moved
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// (allocations, bytes) asked for by this thread so far; a `realloc` counts as one allocation.
pub fn snapshot() -> (u64, u64) {
    (ALLOCS.with(Cell::get), BYTES.with(Cell::get))
}

/// The bytes allocated and not yet freed, by every thread of the process (an allocation freed
/// on another thread than its own is counted off where it is freed).
pub fn live_bytes() -> i64 {
    LIVE.load(Ordering::Relaxed)
}

/// The most bytes allocated and not yet freed at once since the last [`reset_peak`] (or the
/// start), by every thread of the process.
pub fn peak_bytes() -> i64 {
    PEAK.load(Ordering::Relaxed)
}

/// Starts [`peak_bytes`] again from what is live now.
pub fn reset_peak() {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
}
