//! Bulkhead: at most N calls in flight per name, with an optional short wait for a slot.
//!
//! One slow downstream then holds at most N of the caller's calls, instead of all of them
//! (each call runs one attempt at a time, plus its hedges: with `hedge.max = 3`, up to 4N
//! attempts). A call nested in another under the same bulkhead runs in its caller's slot, so
//! what the bound counts is the outermost calls: a body that runs several nested calls under
//! the same bulkhead at once (`join!`) runs them all in its one slot. Slots are taken in the order they were asked for; a call that finds
//! no slot within `max_wait` fails fast with [`BulkheadFull`].

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::invalid::InvalidPolicy;

/// Settings of a bulkhead (`[bulkheads.NAME]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkheadSpec {
    /// Calls in flight at once, at least 1.
    pub max_concurrent: u32,
    /// How long a call waits for a slot before failing fast (zero: not at all).
    pub max_wait: Duration,
}

impl BulkheadSpec {
    /// The largest `max_concurrent`.
    pub const MAX_CONCURRENT: u32 = *resilience_spec::bounds::BULKHEAD_MAX_CONCURRENT.end();

    /// Checks the ranges documented on each field.
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        resilience_spec::rules::bulkhead_max_concurrent(u64::from(self.max_concurrent))
            .map_err(|b| InvalidPolicy(b.to_string()))
    }
}

/// How far `acquire` waits when `max_wait` is past the clock's end.
const FAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// Returned when no slot was free in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkheadFull;

impl fmt::Display for BulkheadFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bulkhead full")
    }
}

impl std::error::Error for BulkheadFull {}

/// Why [`Bulkhead::acquire_by`] gave no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refused {
    /// No slot came free within `max_wait`.
    Full,
    /// The call's deadline came before a slot or the end of `max_wait`.
    Deadline,
}

/// A copy of a bulkhead's state at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BulkheadSnapshot {
    /// Slots in all.
    pub max_concurrent: u32,
    /// Calls holding a slot now.
    pub in_flight: u32,
    /// Slots granted since the start.
    pub admitted: u64,
    /// Calls refused since the start.
    pub rejected: u64,
}

/// A bulkhead shared by name.
#[derive(Debug)]
pub struct Bulkhead {
    spec: BulkheadSpec,
    slots: Slots,
    /// Slots granted, on every thread: striped.
    admitted: crate::counters::Striped,
    rejected: AtomicU64,
}

/// How a bulkhead counts its slots.
#[derive(Debug)]
enum Slots {
    /// `max_wait` zero (the default): no call ever waits, so the calls in flight are one
    /// counter, and a slot given back is one atomic subtraction (a semaphore takes its
    /// waiters' lock on every release).
    Counted(AtomicU32),
    /// Calls wait their turn for a slot: a fair semaphore.
    Queued(Semaphore),
}

/// A slot, held for the whole call and given back on drop.
#[derive(Debug)]
pub struct BulkheadPermit<'a> {
    _slot: Slot<'a>,
}

#[derive(Debug)]
enum Slot<'a> {
    Counted(&'a AtomicU32),
    Queued(#[allow(dead_code, reason = "held for its drop")] SemaphorePermit<'a>),
}

impl Drop for Slot<'_> {
    #[inline]
    fn drop(&mut self) {
        if let Slot::Counted(in_flight) = self {
            in_flight.fetch_sub(1, Ordering::Release);
        }
    }
}

impl Bulkhead {
    /// An empty bulkhead.
    ///
    /// # Panics
    ///
    /// If `spec` is invalid (see [`BulkheadSpec::validate`]); [`Bulkhead::try_new`] returns
    /// the error.
    pub fn new(spec: BulkheadSpec) -> Bulkhead {
        match Bulkhead::try_new(spec) {
            Ok(b) => b,
            Err(e) => panic!("{e}"),
        }
    }

    /// An empty bulkhead, or why `spec` is invalid.
    pub fn try_new(spec: BulkheadSpec) -> Result<Bulkhead, InvalidPolicy> {
        spec.validate()?;
        Ok(Bulkhead {
            spec,
            slots: if spec.max_wait.is_zero() {
                Slots::Counted(AtomicU32::new(0))
            } else {
                Slots::Queued(Semaphore::new(spec.max_concurrent as usize))
            },
            admitted: Default::default(),
            rejected: AtomicU64::new(0),
        })
    }

    /// Its settings.
    pub fn spec(&self) -> BulkheadSpec {
        self.spec
    }

    /// Takes a slot: at once if one is free, else after waiting up to `max_wait` behind the
    /// calls that asked first.
    pub async fn acquire(&self) -> Result<BulkheadPermit<'_>, BulkheadFull> {
        // Past `max_wait` (a `max_wait` beyond the clock, `Duration::MAX` for "as long as it
        // takes": a year, as far as the timer goes).
        let now = tokio::time::Instant::now();
        let far = now
            .checked_add(self.spec.max_wait.saturating_add(Duration::from_secs(1)))
            .unwrap_or_else(|| now + FAR);
        self.acquire_by(far).await.map_err(|_| BulkheadFull)
    }

    /// A slot free now, or `None` (the caller then waits with [`acquire_by`](Self::acquire_by),
    /// which counts a refusal): the call's start takes its slot this way without a future. A
    /// slot given back while calls wait goes to the first of them, so this never overtakes
    /// them.
    #[inline]
    pub(crate) fn try_acquire_now(&self) -> Option<BulkheadPermit<'_>> {
        Some(self.granted(self.take_now()?))
    }

    /// A slot free now.
    #[inline]
    fn take_now(&self) -> Option<Slot<'_>> {
        match &self.slots {
            Slots::Counted(in_flight) => {
                take_below(in_flight, self.spec.max_concurrent)?;
                Some(Slot::Counted(in_flight))
            }
            Slots::Queued(sem) => Some(Slot::Queued(sem.try_acquire().ok()?)),
        }
    }

    /// [`try_acquire_now`](Self::try_acquire_now), the permit written into `slot` (empty),
    /// where the session keeps it: a permit returned, then moved into the session, was copied
    /// in pieces just written, and the copy waited for them.
    pub(crate) fn try_acquire_into<'a>(&'a self, slot: &mut Option<BulkheadPermit<'a>>) -> bool {
        let Some(s) = self.take_now() else {
            return false;
        };
        *slot = Some(self.granted(s));
        true
    }

    #[inline]
    fn granted<'a>(&'a self, slot: Slot<'a>) -> BulkheadPermit<'a> {
        self.admitted.incr();
        BulkheadPermit { _slot: slot }
    }

    /// Takes a slot like [`acquire`](Self::acquire), but waits no later than `deadline`: the
    /// wait for a slot counts against the call's deadline.
    pub async fn acquire_by(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<BulkheadPermit<'_>, Refused> {
        if let Some(p) = self.try_acquire_now() {
            return Ok(p);
        }
        let permit = match &self.slots {
            // No wait: refused at once.
            Slots::Counted(_) => Err(Refused::Full),
            Slots::Queued(sem) => {
                wait_for_slot(
                    sem,
                    self.spec.max_wait,
                    deadline,
                    tokio::time::Instant::now,
                    (Refused::Full, Refused::Deadline),
                )
                .await
            }
        };
        match permit {
            Ok(p) => Ok(self.granted(Slot::Queued(p))),
            Err(why) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                Err(why)
            }
        }
    }

    /// Calls holding a slot now.
    pub fn in_flight(&self) -> u32 {
        match &self.slots {
            Slots::Counted(in_flight) => in_flight.load(Ordering::Relaxed),
            Slots::Queued(sem) => self.spec.max_concurrent - sem.available_permits() as u32,
        }
    }

    /// Its occupancy and counters now.
    pub fn snapshot(&self) -> BulkheadSnapshot {
        BulkheadSnapshot {
            max_concurrent: self.spec.max_concurrent,
            in_flight: self.in_flight(),
            admitted: self.admitted.get(),
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }
}

/// Takes one of `bound` slots counted in `in_flight`: the count with it, or `None` when all
/// are taken. The bulkhead and the adaptive concurrency limit without a wait count theirs so.
#[inline]
pub(crate) fn take_below(in_flight: &AtomicU32, bound: u32) -> Option<u32> {
    let mut n = in_flight.load(Ordering::Relaxed);
    loop {
        if n >= bound {
            return None;
        }
        match in_flight.compare_exchange_weak(n, n + 1, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => return Some(n + 1),
            Err(now) => n = now,
        }
    }
}

/// Waits for a slot of `sem`, no longer than `max_wait` and no later than `deadline`; on
/// running out, says which of the two ran out first: `why.0` the wait, `why.1` the deadline.
/// The bulkhead and the adaptive concurrency limit both wait this way. `now` reads the clock
/// (or gives a reading the caller has), only when there is a wait: a refusal at once
/// (`max_wait` zero) reads none.
pub(crate) async fn wait_for_slot<R>(
    sem: &Semaphore,
    max_wait: Duration,
    deadline: tokio::time::Instant,
    now: impl FnOnce() -> tokio::time::Instant,
    why: (R, R),
) -> Result<SemaphorePermit<'_>, R> {
    if max_wait.is_zero() {
        return Err(why.0);
    }
    // A `max_wait` past the clock's end (`Duration::MAX`) waits for the deadline.
    let (until, why) = match now().checked_add(max_wait) {
        Some(by_wait) if by_wait <= deadline => (by_wait, why.0),
        _ => (deadline, why.1),
    };
    match tokio::time::timeout_at(until, sem.acquire()).await {
        // A slot handed over once the wait had ended at the deadline's bound (its timer
        // fired, the task not polled yet: the timeout polls the acquire first) is one the
        // call may no longer take: a request sent now could only time out. Given back to the
        // next waiter. (Past `max_wait` alone, with time left before the deadline, it is
        // taken: `max_wait` is then overrun by as late as the waiter was polled.)
        Ok(Ok(p)) if tokio::time::Instant::now() < deadline => Ok(p),
        // Timed out; `Err(AcquireError)` is impossible as the semaphore is never closed.
        _ => Err(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::{Instant, advance};

    fn bulkhead(max_concurrent: u32, max_wait_ms: u64) -> Bulkhead {
        Bulkhead::new(BulkheadSpec {
            max_concurrent,
            max_wait: Duration::from_millis(max_wait_ms),
        })
    }

    /// `max_wait = Duration::MAX` ("as long as it takes"): no overflow of the clock (it once
    /// panicked adding it to `Instant::now()`, even with a slot free); a call waits for its
    /// deadline, and `acquire` for the slot.
    #[tokio::test(start_paused = true)]
    async fn a_max_wait_past_the_clocks_end_waits_for_the_deadline() {
        let b = Bulkhead::new(BulkheadSpec {
            max_concurrent: 1,
            max_wait: Duration::MAX,
        });
        let held = b.acquire().await.unwrap();
        let t = Instant::now();
        let refused = b.acquire_by(t + Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(refused, Refused::Deadline);
        assert_eq!(t.elapsed(), Duration::from_secs(1));
        let (got, ()) = tokio::join!(b.acquire(), async {
            advance(Duration::from_secs(60)).await;
            drop(held);
        });
        assert!(got.is_ok());
        assert_eq!(t.elapsed(), Duration::from_secs(61));
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_n_then_fails_fast() {
        let b = bulkhead(2, 0);
        let p1 = b.acquire().await.unwrap();
        let _p2 = b.acquire().await.unwrap();
        assert_eq!(b.in_flight(), 2);
        let t = Instant::now();
        assert_eq!(b.acquire().await.unwrap_err(), BulkheadFull);
        assert_eq!(t.elapsed(), Duration::ZERO);
        drop(p1);
        assert_eq!(b.in_flight(), 1);
        let _p3 = b.acquire().await.unwrap();
        let s = b.snapshot();
        assert_eq!((s.in_flight, s.admitted, s.rejected), (2, 3, 1));
    }

    /// A bulkhead that never waits counts its slots without a semaphore: from four threads
    /// at once, never more than its slots are held, each slot given back is free again, and
    /// the counters add up.
    #[test]
    fn slots_counted_without_a_wait_hold_under_contention() {
        let b = bulkhead(3, 0);
        let held = AtomicU32::new(0);
        let most = AtomicU32::new(0);
        let (granted, refused) = (AtomicU64::new(0), AtomicU64::new(0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..20_000 {
                        match b.try_acquire_now() {
                            Some(p) => {
                                let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                                most.fetch_max(now, Ordering::SeqCst);
                                std::hint::spin_loop();
                                held.fetch_sub(1, Ordering::SeqCst);
                                drop(p);
                                granted.fetch_add(1, Ordering::Relaxed);
                            }
                            None => {
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
        });
        assert!(
            most.load(Ordering::SeqCst) <= 3,
            "{most:?} slots held at once"
        );
        assert_eq!(b.in_flight(), 0);
        let s = b.snapshot();
        assert_eq!(s.admitted, granted.load(Ordering::Relaxed));
        assert_eq!(
            granted.load(Ordering::Relaxed) + refused.load(Ordering::Relaxed),
            80_000
        );
        let all: Vec<_> = (0..3)
            .map(|_| b.try_acquire_now().expect("a free slot"))
            .collect();
        assert!(b.try_acquire_now().is_none());
        drop(all);
        assert_eq!(b.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn waits_up_to_max_wait_then_fails() {
        let b = bulkhead(1, 100);
        let _p = b.acquire().await.unwrap();
        let t = Instant::now();
        assert!(b.acquire().await.is_err());
        assert_eq!(t.elapsed(), Duration::from_millis(100));
    }

    /// A slot handed to a waiter whose wait had ended at its deadline before it was polled
    /// again (a busy executor) is given back, not taken past the deadline's bound; one past
    /// `max_wait` alone, with time left, is taken.
    #[tokio::test(start_paused = true)]
    async fn a_slot_handed_over_after_the_wait_ended_is_given_back() {
        use std::future::Future as _;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for (max_wait, deadline, taken) in [(1000, 100, false), (100, 1000, true)] {
            let b = bulkhead(1, max_wait);
            let p = b.acquire().await.unwrap();
            let until = Instant::now() + Duration::from_millis(deadline);
            let mut waiter = Box::pin(b.acquire_by(until));
            assert!(waiter.as_mut().poll(&mut cx).is_pending());
            tokio::time::sleep(Duration::from_millis(150)).await;
            // Handed to the waiter still queued, which has not run since its wait ended.
            drop(p);
            let got = waiter.await;
            assert_eq!(
                got.is_ok(),
                taken,
                "max_wait {max_wait}, deadline {deadline}"
            );
            // Taken, it is held; refused, it was given back.
            assert_eq!(b.try_acquire_now().is_some(), !taken, "max_wait {max_wait}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_freed_while_waiting_is_taken() {
        let b = bulkhead(1, 100);
        let p = b.acquire().await.unwrap();
        let t = Instant::now();
        let (got, ()) = tokio::join!(b.acquire(), async {
            advance(Duration::from_millis(60)).await;
            drop(p);
        });
        assert!(got.is_ok());
        assert_eq!(t.elapsed(), Duration::from_millis(60));
        assert_eq!(b.in_flight(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_served_in_order() {
        let b = bulkhead(1, 1000);
        let p = b.acquire().await.unwrap();
        let order = std::sync::Mutex::new(Vec::new());
        let waiter = |i: u32| {
            let (b, order) = (&b, &order);
            async move {
                let _slot = b.acquire().await.unwrap();
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::join!(waiter(1), waiter(2), waiter(3), async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            drop(p);
        });
        assert_eq!(*order.lock().unwrap(), [1, 2, 3]);
    }

    #[test]
    fn spec_ranges() {
        let spec = |max_concurrent| BulkheadSpec {
            max_concurrent,
            max_wait: Duration::ZERO,
        };
        assert!(spec(1).validate().is_ok());
        assert!(spec(0).validate().is_err());
        assert!(Bulkhead::try_new(spec(0)).is_err());
        assert!(spec(BulkheadSpec::MAX_CONCURRENT + 1).validate().is_err());
    }
}
