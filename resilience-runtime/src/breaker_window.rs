//! The windows a breaker keeps behind a short lock: a count window longer than the breaker's
//! word, a time-based window (the calls of the last `window_for`, in ten buckets), and either
//! one when slow calls are watched (`slow_call_duration`). The breaker's state still changes
//! only by compare-and-swap on its word; the lock is taken only to record an outcome.

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
    /// The last `window` calls, one slot each: bit 0 failure, bit 1 slow; with the failures
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
                bucket_ms: window_for_ms.div_ceil(BUCKETS as u64).max(1),
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

    pub(crate) fn reset(&mut self, generation: u64) {
        self.generation = generation;
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
    /// of the window.
    pub(crate) fn push(&mut self, now_ms: impl FnOnce() -> u64, fail: bool, slow: bool) -> Totals {
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
                *totals
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

    /// Calls, failures and slow calls in the window at `now_ms`.
    pub(crate) fn totals(&self, now_ms: u64) -> Totals {
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
        w.push(|| 0, true, false);
        w.push(|| 0, false, true);
        let t = w.push(|| 0, false, false);
        assert_eq!((t.seen, t.failures, t.slow), (3, 1, 1));
        let t = w.push(|| 0, false, false);
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
                    w.reset(1);
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
                assert_eq!(w.push(|| 0, fail, slow), want, "window {len}, step {step}");
                assert_eq!(w.totals(0), want, "window {len}, step {step}");
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
                    w.reset(1);
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
                let got = w.push(|| at, fail, slow);
                assert_eq!(got, want, "bucket {bucket_ms} ms, step {step}");
                assert_eq!(
                    w.totals(latest * bucket_ms),
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
        w.push(|| 0, true, false);
        w.push(|| 500, true, true);
        let t = w.push(|| 9_999, false, false);
        assert_eq!((t.seen, t.failures, t.slow), (3, 2, 1));
        // At 10 s the first bucket leaves the window.
        let t = w.push(|| 10_000, false, false);
        assert_eq!((t.seen, t.failures, t.slow), (2, 0, 0));
        w.reset(1);
        let t = w.push(|| 10_000, false, false);
        assert_eq!(t.seen, 1);
    }
}
