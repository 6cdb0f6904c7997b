//! Retry budget: retries may add at most `ratio` to first attempts, plus a floor per second.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Settings of a retry budget (`[budgets.NAME]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetSpec {
    /// Retries may add at most this share of first attempts (0.1 = 10%).
    pub ratio: f64,
    /// Retries always allowed per second, so a quiet client can still retry.
    pub min_per_sec: u32,
}

impl BudgetSpec {
    pub const DEFAULT: BudgetSpec = BudgetSpec {
        ratio: 0.1,
        min_per_sec: 10,
    };
}

impl Default for BudgetSpec {
    fn default() -> Self {
        BudgetSpec::DEFAULT
    }
}

/// A retry budget shared by name (minimal version: tokens, without decay).
#[derive(Debug)]
pub struct Budget {
    spec: BudgetSpec,
    milli_tokens: AtomicI64,
}

impl Budget {
    pub fn new(spec: BudgetSpec) -> Budget {
        Budget {
            spec,
            milli_tokens: AtomicI64::new(i64::from(spec.min_per_sec) * 1000),
        }
    }

    pub fn spec(&self) -> BudgetSpec {
        self.spec
    }

    /// Records one first attempt.
    pub fn deposit(&self) {
        self.milli_tokens
            .fetch_add((self.spec.ratio * 1000.0) as i64, Ordering::Relaxed);
    }

    /// Takes one retry from the budget; false when it is exhausted.
    pub fn withdraw(&self) -> bool {
        self.milli_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t >= 1000).then(|| t - 1000)
            })
            .is_ok()
    }

    #[allow(dead_code)]
    const WINDOW: Duration = Duration::from_secs(10);
}
