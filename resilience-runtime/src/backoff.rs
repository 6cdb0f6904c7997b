//! Delays between attempts: exponential or constant growth, with jitter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::policy::{Backoff, BackoffKind, Jitter};

static SEED: AtomicU64 = AtomicU64::new(0);

/// Makes jitter reproducible from now on (tests, demos): every call seeds its generator from
/// this value and a counter. `None` goes back to random seeds.
pub fn set_jitter_seed(seed: Option<u64>) {
    SEED.store(seed.map_or(0, |s| s | 1), Ordering::Relaxed);
}

fn new_rng() -> fastrand::Rng {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    match SEED.load(Ordering::Relaxed) {
        0 => fastrand::Rng::new(),
        s => fastrand::Rng::with_seed(s.wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed))),
    }
}

/// The backoff state of one call.
#[derive(Debug)]
pub struct BackoffState {
    backoff: Backoff,
    prev: Duration,
    rng: fastrand::Rng,
}

impl BackoffState {
    /// The schedule of one call, with the process's jitter source.
    pub fn new(backoff: Backoff) -> BackoffState {
        BackoffState {
            backoff,
            prev: backoff.initial,
            rng: new_rng(),
        }
    }

    /// The schedule of one call, with jitter from `seed` (repeatable).
    pub fn with_seed(backoff: Backoff, seed: u64) -> BackoffState {
        BackoffState {
            backoff,
            prev: backoff.initial,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// The ceiling of the delay after failed attempt `attempt` (1-based), before jitter.
    pub fn ceiling(backoff: &Backoff, attempt: u32) -> Duration {
        match backoff.kind {
            BackoffKind::Constant => backoff.initial,
            BackoffKind::Exponential => {
                let mut d = backoff.initial.as_nanos() as f64;
                let m = f64::from(backoff.multiplier_milli) / 1000.0;
                for _ in 1..attempt {
                    d *= m;
                    if d >= backoff.max.as_nanos() as f64 {
                        return backoff.max;
                    }
                }
                Duration::from_nanos(d as u64).min(backoff.max)
            }
        }
    }

    /// The delay after failed attempt `attempt` (1-based).
    pub fn next_delay(&mut self, attempt: u32) -> Duration {
        let b = self.backoff;
        let ceiling = Self::ceiling(&b, attempt);
        let d = match b.jitter {
            Jitter::None => ceiling,
            Jitter::Full => self.uniform(Duration::ZERO, ceiling),
            Jitter::Equal => self.uniform(ceiling / 2, ceiling),
            // A curve of its own, between `initial` and three times the previous delay; under
            // `kind = constant` held to its ceiling, `initial`, as every constant delay is.
            Jitter::Decorrelated if b.kind == BackoffKind::Constant => ceiling,
            Jitter::Decorrelated => {
                let hi = self.prev.saturating_mul(3).min(b.max).max(b.initial);
                self.uniform(b.initial, hi)
            }
        };
        self.prev = d;
        d
    }

    fn uniform(&mut self, lo: Duration, hi: Duration) -> Duration {
        if hi <= lo {
            return lo;
        }
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let (lo_n, hi_n) = (nanos(lo), nanos(hi));
        Duration::from_nanos(self.rng.u64(lo_n..=hi_n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(kind: BackoffKind, jitter: Jitter) -> Backoff {
        Backoff {
            kind,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            multiplier_milli: 2000,
            jitter,
        }
    }

    /// `kind = constant` waits its `initial` at most, whatever the jitter; `decorrelated`,
    /// which would grow towards `max`, waits `initial` itself.
    #[test]
    fn constant_never_waits_more_than_initial() {
        for jitter in [
            Jitter::None,
            Jitter::Full,
            Jitter::Equal,
            Jitter::Decorrelated,
        ] {
            let mut s = BackoffState::new(b(BackoffKind::Constant, jitter));
            for attempt in 1..=50 {
                let d = s.next_delay(attempt);
                assert!(
                    d <= Duration::from_millis(100),
                    "{jitter:?} {attempt}: {d:?}"
                );
                if matches!(jitter, Jitter::None | Jitter::Decorrelated) {
                    assert_eq!(d, Duration::from_millis(100), "{jitter:?}");
                }
            }
        }
    }

    #[test]
    fn exponential_without_jitter_doubles_then_caps() {
        let mut s = BackoffState::with_seed(b(BackoffKind::Exponential, Jitter::None), 1);
        let ms: Vec<u128> = (1..=7).map(|a| s.next_delay(a).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 2000, 2000]);
    }

    #[test]
    fn constant_stays() {
        let mut s = BackoffState::with_seed(b(BackoffKind::Constant, Jitter::None), 1);
        assert!((1..=5).all(|a| s.next_delay(a) == Duration::from_millis(100)));
    }

    #[test]
    fn fractional_multiplier() {
        let mut bo = b(BackoffKind::Exponential, Jitter::None);
        bo.multiplier_milli = 1500;
        let mut s = BackoffState::with_seed(bo, 1);
        let ms: Vec<u128> = (1..=3).map(|a| s.next_delay(a).as_millis()).collect();
        assert_eq!(ms, [100, 150, 225]);
    }

    /// Decorrelated jitter: each delay is within `[initial, 3 × previous]` (the first's
    /// "previous" is `initial`; capped at `max`, never below `initial`), so it grows at most
    /// threefold from one failure to the next, and reaches the cap.
    #[test]
    fn decorrelated_jitter_stays_within_three_times_the_previous_delay() {
        let bo = b(BackoffKind::Exponential, Jitter::Decorrelated);
        for seed in 1..=20 {
            let mut s = BackoffState::with_seed(bo, seed);
            let mut prev = bo.initial;
            let mut reached_max = false;
            for a in 1..=60u32 {
                let d = s.next_delay(a);
                let hi = (prev * 3).min(bo.max).max(bo.initial);
                assert!(
                    d >= bo.initial && d <= hi,
                    "seed {seed}, failure {a}: {d:?} outside [{:?}, {hi:?}] after {prev:?}",
                    bo.initial
                );
                reached_max |= d > bo.max / 2;
                prev = d;
            }
            assert!(reached_max, "seed {seed}: never near the cap");
        }
    }

    #[test]
    fn jitter_stays_in_bounds_and_is_seedable() {
        for jitter in [Jitter::Full, Jitter::Equal, Jitter::Decorrelated] {
            let mut s1 = BackoffState::with_seed(b(BackoffKind::Exponential, jitter), 42);
            let mut s2 = BackoffState::with_seed(b(BackoffKind::Exponential, jitter), 42);
            let mut distinct = std::collections::HashSet::new();
            for a in 1..=200u32 {
                let a = a % 8 + 1;
                let (d1, d2) = (s1.next_delay(a), s2.next_delay(a));
                assert_eq!(d1, d2, "{jitter:?} is not reproducible from its seed");
                let ceiling = BackoffState::ceiling(&b(BackoffKind::Exponential, jitter), a);
                match jitter {
                    Jitter::Full => assert!(d1 <= ceiling),
                    Jitter::Equal => assert!(d1 >= ceiling / 2 && d1 <= ceiling),
                    _ => assert!(d1 >= Duration::from_millis(100) && d1 <= Duration::from_secs(2)),
                }
                distinct.insert(d1);
            }
            assert!(
                distinct.len() > 50,
                "{jitter:?} produced only {} distinct delays",
                distinct.len()
            );
        }
    }
}
