//! The windows a breaker keeps behind a short lock: a count window longer than the breaker's
//! word, a time-based window (the attempts of the last `window_for`, in ten buckets), and either
//! one when slow calls are watched (`slow_call_duration`). The breaker's state still changes
//! only by compare-and-swap on its word; the lock is taken only to record an outcome, and, in
//! a time window that holds neither a failure nor a slow call, not for a success ([`Fast`]).

use std::sync::atomic::{AtomicU64, Ordering};

/// Outcomes of one closed generation of a breaker.
#[derive(Debug)]
pub(crate) struct Window {
    /// The closed generation these outcomes belong to; another one means start afresh.
    pub(crate) generation: u64,
    kind: Kind,
}

// The time window's buckets are kept inline, beside the lock and the totals a report writes
// (measured: a separate allocation was one more cache line passing between the cores on every
// report). One window per breaker: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Kind {
    /// The last `window` attempts' outcomes, one slot each: bit 0 failure, bit 1 slow; with the failures
    /// and slow calls among them kept as they change, so that a report costs the same
    /// whatever the window's length.
    Count {
        window: u32,
        head: u32,
        seen: u32,
        failures: u32,
        slow: u32,
        slots: Box<[u8]>,
    },
    /// Ten buckets of `bucket_ms` each: (bucket number, calls, failures, slow), the one of
    /// bucket `n` in slot `n % BUCKETS`; with the totals of the window that ends with the
    /// latest bucket written kept as buckets are written and leave it, so that a report adds
    /// to one bucket instead of summing ten.
    Time {
        bucket_ms: u64,
        /// The latest bucket written (`u64::MAX`: none since the last reset).
        latest: u64,
        totals: Totals,
        buckets: [(u64, u32, u32, u32); BUCKETS],
    },
}

const BUCKETS: usize = 10;

/// A time window's successes counted without its lock: while the window holds neither a
/// failure nor a slow call, a success can trip nothing (no failure rate, no slow-call rate
/// above zero), so it is only counted, here, per bucket, by compare-and-swap, in the stripe of
/// the thread that adds (its striped counters' stripe): calls on many threads then share no
/// lock and, mostly, no word. On two threads one lock per outcome was about four times the
/// call's cost on one. The window's totals are its locked buckets' plus these.
#[derive(Debug)]
pub(crate) struct Fast {
    bucket_ms: u64,
    /// The closed generation whose window holds neither a failure nor a slow call
    /// (`u64::MAX`: none): its successes are counted here. Set under the window's lock.
    pub(crate) clean: AtomicU64,
    /// The stripes added to since the last clear, one bit each: those a sum reads.
    used: AtomicU64,
    stripes: Box<[FastStripe; STRIPES]>,
}

const STRIPES: usize = crate::counters::STRIPES;

/// One thread's (or a few threads') counts, on cache lines of its own. Per slot (bucket `n` in
/// slot `n % BUCKETS`): the bucket number's low 32 bits in the high half, its successes in the
/// low half. A slot with no success counts nothing, whatever its bucket, so all zeros is empty.
#[derive(Debug, Default)]
#[repr(align(128))]
struct FastStripe([AtomicU64; BUCKETS]);

impl Fast {
    /// For a time window of `window_for_ms` (not zero).
    pub(crate) fn new(window_for_ms: u64) -> Fast {
        Fast {
            bucket_ms: bucket_ms(window_for_ms),
            clean: AtomicU64::new(u64::MAX),
            used: AtomicU64::new(0),
            stripes: Box::default(),
        }
    }

    /// Counts a success that ended `now_ms` after the breaker's origin.
    pub(crate) fn add(&self, now_ms: u64) {
        let i = crate::counters::stripe();
        let bit = 1u64 << i;
        if self.used.load(Ordering::Relaxed) & bit == 0 {
            self.used.fetch_or(bit, Ordering::Relaxed);
        }
        let n = now_ms / self.bucket_ms;
        let tag = n as u32; // the low 32 bits: compared by wrapping difference
        let slot = &self.stripes[i].0[(n % BUCKETS as u64) as usize];
        let mut v = slot.load(Ordering::Relaxed);
        loop {
            let held = (v >> 32) as u32;
            // The slot's bucket is older than this one: it leaves the window, this one starts
            // with this success. The same bucket, or a newer one (this success's end was read
            // before that of one counted first): one more there.
            let next = if (tag.wrapping_sub(held) as i32) > 0 {
                (u64::from(tag) << 32) | 1
            } else {
                v + u64::from((v as u32) < u32::MAX)
            };
            match slot.compare_exchange_weak(v, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(now) => v = now,
            }
        }
    }

    /// The successes counted here in the ten buckets that end with bucket `latest` (and in
    /// any newer one).
    fn sum(&self, latest: u64) -> u32 {
        let latest = latest as u32;
        self.stripes_in(self.used.load(Ordering::Relaxed))
            .flat_map(|stripe| stripe.0.iter())
            .map(|slot| {
                let v = slot.load(Ordering::Relaxed);
                let age = latest.wrapping_sub((v >> 32) as u32) as i32;
                if age < BUCKETS as i32 { v as u32 } else { 0 }
            })
            .fold(0u32, u32::saturating_add)
    }

    fn clear(&self) {
        for stripe in self.stripes_in(self.used.swap(0, Ordering::Relaxed)) {
            for slot in &stripe.0 {
                slot.store(0, Ordering::Relaxed);
            }
        }
    }

    /// The stripes whose bit is set in `used`.
    fn stripes_in(&self, used: u64) -> impl Iterator<Item = &FastStripe> {
        self.stripes
            .iter()
            .enumerate()
            .filter(move |(i, _)| used & (1 << i) != 0)
            .map(|(_, stripe)| stripe)
    }
}

/// A time window's bucket: a tenth of it, at least a millisecond.
fn bucket_ms(window_for_ms: u64) -> u64 {
    window_for_ms.div_ceil(BUCKETS as u64).max(1)
}

/// Calls, failures and slow calls in the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Totals {
    pub(crate) seen: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
}

impl Window {
    /// A count window of `window` calls, or (when `window_for_ms` is not zero) a time window.
    pub(crate) fn new(window: u32, window_for_ms: u64) -> Window {
        let kind = if window_for_ms == 0 {
            Kind::Count {
                window,
                head: 0,
                seen: 0,
                failures: 0,
                slow: 0,
                slots: vec![0; window as usize].into_boxed_slice(),
            }
        } else {
            Kind::Time {
                bucket_ms: bucket_ms(window_for_ms),
                latest: u64::MAX,
                totals: Totals::default(),
                buckets: [(u64::MAX, 0, 0, 0); BUCKETS],
            }
        };
        Window {
            generation: 0,
            kind,
        }
    }

    /// Starts afresh for `generation`, the successes counted without the lock (`fast`)
    /// included.
    pub(crate) fn reset(&mut self, generation: u64, fast: Option<&Fast>) {
        self.generation = generation;
        if let Some(f) = fast {
            f.clear();
        }
        match &mut self.kind {
            Kind::Count {
                head,
                seen,
                failures,
                slow,
                slots,
                ..
            } => {
                *head = 0;
                *seen = 0;
                *failures = 0;
                *slow = 0;
                slots.fill(0);
            }
            Kind::Time {
                latest,
                totals,
                buckets,
                ..
            } => {
                *latest = u64::MAX;
                *totals = Totals::default();
                *buckets = [(u64::MAX, 0, 0, 0); BUCKETS];
            }
        }
    }

    /// Records one outcome at `now_ms` (asked only of a time window) and returns the totals
    /// of the window, with the successes `fast` counted (a time window's).
    pub(crate) fn push(
        &mut self,
        now_ms: impl FnOnce() -> u64,
        fail: bool,
        slow: bool,
        fast: Option<&Fast>,
    ) -> Totals {
        match &mut self.kind {
            Kind::Count {
                window,
                head,
                seen,
                failures,
                slow: slows,
                slots,
            } => {
                // The slot written over leaves the window (an empty one holds 0).
                let slot = &mut slots[*head as usize];
                *failures -= u32::from(*slot & 1);
                *slows -= u32::from(*slot >> 1);
                *slot = u8::from(fail) | (u8::from(slow) << 1);
                *failures += u32::from(fail);
                *slows += u32::from(slow);
                *head = (*head + 1) % *window;
                *seen = (*seen + 1).min(*window);
                Totals {
                    seen: *seen,
                    failures: *failures,
                    slow: *slows,
                }
            }
            Kind::Time {
                bucket_ms,
                latest,
                totals,
                buckets,
            } => {
                let n = now_ms() / *bucket_ms;
                if *latest == u64::MAX || n > *latest {
                    // The window moves on to bucket `n`: the buckets that leave it are those
                    // in the slots of the buckets after the latest one up to `n` (all ten
                    // when it moved a whole window or more).
                    let from = if *latest == u64::MAX || n - *latest >= BUCKETS as u64 {
                        (n + 1).saturating_sub(BUCKETS as u64)
                    } else {
                        *latest + 1
                    };
                    // (A slot never written since the reset holds zeros.)
                    for k in from..=n {
                        let b = &mut buckets[(k % BUCKETS as u64) as usize];
                        totals.seen -= b.1;
                        totals.failures -= b.2;
                        totals.slow -= b.3;
                        *b = (k, 0, 0, 0);
                    }
                    *latest = n;
                }
                // An outcome whose end was read before that of one recorded first (both waited
                // for the lock) goes in the latest bucket, a bucket or so after its own.
                let b = &mut buckets[(*latest % BUCKETS as u64) as usize];
                b.1 += 1;
                b.2 += u32::from(fail);
                b.3 += u32::from(slow);
                totals.seen += 1;
                totals.failures += u32::from(fail);
                totals.slow += u32::from(slow);
                let mut t = *totals;
                if let Some(f) = fast {
                    t.seen = t.seen.saturating_add(f.sum(*latest));
                }
                t
            }
        }
    }

    /// Whether a success recorded now, with these totals, would change nothing: a count window
    /// full of calls that neither failed nor were slow (every slot alike). Never a time window,
    /// whose buckets move with the clock.
    pub(crate) fn full_and_clean(&self, t: Totals) -> bool {
        matches!(self.kind, Kind::Count { window, .. }
            if t.seen == window && t.failures == 0 && t.slow == 0)
    }

    /// Calls, failures and slow calls in the window at `now_ms`, with the successes `fast`
    /// counted (a time window's).
    pub(crate) fn totals(&self, now_ms: u64, fast: Option<&Fast>) -> Totals {
        let mut t = Totals::default();
        match &self.kind {
            Kind::Count {
                seen,
                failures,
                slow,
                ..
            } => {
                t.seen = *seen;
                t.failures = *failures;
                t.slow = *slow;
            }
            Kind::Time {
                bucket_ms, buckets, ..
            } => {
                let n = now_ms / *bucket_ms;
                // Buckets older than the window (or never used) count for nothing.
                for (at, calls, fails, slows) in buckets.iter() {
                    if *at != u64::MAX && n.saturating_sub(*at) < BUCKETS as u64 {
                        t.seen += calls;
                        t.failures += fails;
                        t.slow += slows;
                    }
                }
                if let Some(f) = fast {
                    t.seen = t.seen.saturating_add(f.sum(n));
                }
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_window_slides() {
        let mut w = Window::new(3, 0);
        w.push(|| 0, true, false, None);
        w.push(|| 0, false, true, None);
        let t = w.push(|| 0, false, false, None);
        assert_eq!((t.seen, t.failures, t.slow), (3, 1, 1));
        let t = w.push(|| 0, false, false, None);
        assert_eq!((t.seen, t.failures, t.slow), (3, 0, 1));
    }

    /// The totals a count window keeps as it goes are those of its last `window` outcomes,
    /// counted afresh, for any length, across a reset.
    #[test]
    fn a_count_window_keeps_the_totals_of_its_last_calls() {
        let mut rng = fastrand::Rng::with_seed(11);
        for len in [1, 2, 3, 10, 64, 100] {
            let mut w = Window::new(len, 0);
            let mut last: Vec<(bool, bool)> = Vec::new();
            for step in 0..1000 {
                if step == 500 {
                    w.reset(1, None);
                    last.clear();
                }
                let (fail, slow) = (rng.u8(..4) == 0, rng.u8(..3) == 0);
                last.push((fail, slow));
                let kept = &last[last.len().saturating_sub(len as usize)..];
                let want = Totals {
                    seen: kept.len() as u32,
                    failures: kept.iter().filter(|o| o.0).count() as u32,
                    slow: kept.iter().filter(|o| o.1).count() as u32,
                };
                assert_eq!(
                    w.push(|| 0, fail, slow, None),
                    want,
                    "window {len}, step {step}"
                );
                assert_eq!(w.totals(0, None), want, "window {len}, step {step}");
            }
        }
    }

    /// The totals a time window keeps as it goes are those of the outcomes in its last ten
    /// buckets, counted afresh: with gaps of every length between reports, reports read late
    /// (recorded in the latest bucket), and a reset.
    #[test]
    fn a_time_window_keeps_the_totals_of_its_last_buckets() {
        let mut rng = fastrand::Rng::with_seed(7);
        for bucket_ms in [1, 7, 100] {
            let mut w = Window::new(20, bucket_ms * BUCKETS as u64);
            // (bucket recorded in, fail, slow)
            let mut all: Vec<(u64, bool, bool)> = Vec::new();
            let (mut now, mut latest) = (rng.u64(..5_000), 0);
            for step in 0..3000 {
                if step == 1500 {
                    w.reset(1, None);
                    all.clear();
                    latest = 0;
                }
                now += match rng.u8(..10) {
                    0..=5 => 0,
                    6 | 7 => rng.u64(..bucket_ms * 3),
                    8 => rng.u64(..bucket_ms * 12),
                    _ => rng.u64(..bucket_ms * 40),
                };
                // Now and then an end read a little before the last one recorded.
                let at = if rng.u8(..8) == 0 {
                    now.saturating_sub(rng.u64(..bucket_ms * 2))
                } else {
                    now
                };
                let (fail, slow) = (rng.u8(..4) == 0, rng.u8(..3) == 0);
                latest = latest.max(at / bucket_ms);
                all.push((latest, fail, slow));
                let kept = all.iter().filter(|o| o.0 + BUCKETS as u64 > latest);
                let want = Totals {
                    seen: kept.clone().count() as u32,
                    failures: kept.clone().filter(|o| o.1).count() as u32,
                    slow: kept.filter(|o| o.2).count() as u32,
                };
                let got = w.push(|| at, fail, slow, None);
                assert_eq!(got, want, "bucket {bucket_ms} ms, step {step}");
                assert_eq!(
                    w.totals(latest * bucket_ms, None),
                    want,
                    "bucket {bucket_ms} ms, step {step}"
                );
            }
        }
    }

    /// With successes counted without the lock ([`Fast`]) beside the locked outcomes: the
    /// totals are the locked buckets' plus the successes of the fast slots in the ten buckets
    /// ending with the latest locked one (or newer), a slot's count left behind when a later
    /// bucket takes its slot; across a reset, which clears both.
    #[test]
    fn a_time_window_counts_its_fast_successes() {
        let mut rng = fastrand::Rng::with_seed(5);
        for bucket_ms in [1, 7, 100] {
            let window_for = bucket_ms * BUCKETS as u64;
            let mut w = Window::new(20, window_for);
            let fast = Fast::new(window_for);
            // (bucket, fail, slow) recorded under the lock; (bucket, still in its slot) fast.
            let mut locked: Vec<(u64, bool, bool)> = Vec::new();
            let mut fasts: Vec<(u64, bool)> = Vec::new();
            let (mut now, mut latest) = (rng.u64(..5_000), None::<u64>);
            for step in 0..3000 {
                if step == 1500 {
                    w.reset(1, Some(&fast));
                    locked.clear();
                    fasts.clear();
                    latest = None;
                }
                now += match rng.u8(..10) {
                    0..=5 => 0,
                    6 | 7 => rng.u64(..bucket_ms * 3),
                    8 => rng.u64(..bucket_ms * 12),
                    _ => rng.u64(..bucket_ms * 40),
                };
                let pushed = if rng.bool() {
                    let b = now / bucket_ms;
                    for f in fasts.iter_mut() {
                        if f.0 % BUCKETS as u64 == b % BUCKETS as u64 && f.0 < b {
                            f.1 = false;
                        }
                    }
                    fasts.push((b, true));
                    fast.add(now);
                    None
                } else {
                    let at = if rng.u8(..8) == 0 {
                        now.saturating_sub(rng.u64(..bucket_ms * 2))
                    } else {
                        now
                    };
                    let (fail, slow) = (rng.u8(..4) == 0, rng.u8(..3) == 0);
                    let l = latest.map_or(at / bucket_ms, |l| l.max(at / bucket_ms));
                    latest = Some(l);
                    locked.push((l, fail, slow));
                    Some(w.push(|| at, fail, slow, Some(&fast)))
                };
                let Some(l) = latest else { continue };
                let kept = locked.iter().filter(|o| o.0 + BUCKETS as u64 > l);
                let want = Totals {
                    seen: (kept.clone().count()
                        + fasts
                            .iter()
                            .filter(|f| f.1 && f.0 + BUCKETS as u64 > l)
                            .count()) as u32,
                    failures: kept.clone().filter(|o| o.1).count() as u32,
                    slow: kept.filter(|o| o.2).count() as u32,
                };
                if let Some(got) = pushed {
                    assert_eq!(got, want, "bucket {bucket_ms} ms, step {step}");
                }
                assert_eq!(
                    w.totals(l * bucket_ms, Some(&fast)),
                    want,
                    "bucket {bucket_ms} ms, step {step}"
                );
            }
        }
    }

    #[test]
    fn a_time_window_forgets_what_is_older() {
        // 10 s in ten buckets of 1 s.
        let mut w = Window::new(20, 10_000);
        w.push(|| 0, true, false, None);
        w.push(|| 500, true, true, None);
        let t = w.push(|| 9_999, false, false, None);
        assert_eq!((t.seen, t.failures, t.slow), (3, 2, 1));
        // At 10 s the first bucket leaves the window.
        let t = w.push(|| 10_000, false, false, None);
        assert_eq!((t.seen, t.failures, t.slow), (2, 0, 0));
        w.reset(1, None);
        let t = w.push(|| 10_000, false, false, None);
        assert_eq!(t.seen, 1);
    }
}
