//! Circuit breaker: a count-based sliding window over the last calls (minimal version).

use std::sync::Mutex;
use std::time::Duration;

/// Settings of a circuit breaker (`[breakers.NAME]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSpec {
    pub failure_rate: f64,
    pub min_calls: u32,
    pub window: u32,
    pub open_for: Duration,
    pub half_open_calls: u32,
}

impl BreakerSpec {
    pub const DEFAULT: BreakerSpec = BreakerSpec {
        failure_rate: 0.5,
        min_calls: 10,
        window: 20,
        open_for: Duration::from_secs(30),
        half_open_calls: 3,
    };
}

/// The state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// Returned when the breaker refuses a call.
#[derive(Debug, Clone, Copy)]
pub struct BreakerOpen;

/// Permission for one attempt; give it back with the outcome.
#[derive(Debug)]
pub struct BreakerPermit {
    _probe: bool,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    outcomes: Vec<bool>,
    opened_at: Option<tokio::time::Instant>,
}

/// A circuit breaker shared by name.
#[derive(Debug)]
pub struct Breaker {
    name: &'static str,
    spec: BreakerSpec,
    inner: Mutex<Inner>,
}

impl Breaker {
    pub fn new(name: &'static str, spec: BreakerSpec) -> Breaker {
        Breaker {
            name,
            spec,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                outcomes: Vec::new(),
                opened_at: None,
            }),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn state(&self) -> BreakerState {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).state
    }

    pub fn try_acquire(&self) -> Result<BreakerPermit, BreakerOpen> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.state == BreakerState::Open {
            match g.opened_at {
                Some(t) if t.elapsed() >= self.spec.open_for => g.state = BreakerState::HalfOpen,
                _ => return Err(BreakerOpen),
            }
        }
        Ok(BreakerPermit {
            _probe: g.state == BreakerState::HalfOpen,
        })
    }

    pub fn on_success(&self, _permit: BreakerPermit) {
        self.record(true);
    }

    pub fn on_failure(&self, _permit: BreakerPermit) {
        self.record(false);
    }

    /// A failure that says nothing about the downstream's health (a 404, a decode error).
    pub fn on_ignored(&self, _permit: BreakerPermit) {}

    fn record(&self, ok: bool) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.state == BreakerState::HalfOpen {
            if ok {
                g.state = BreakerState::Closed;
                g.outcomes.clear();
            } else {
                g.state = BreakerState::Open;
                g.opened_at = Some(tokio::time::Instant::now());
            }
            return;
        }
        g.outcomes.push(ok);
        let w = self.spec.window as usize;
        if g.outcomes.len() > w {
            let n = g.outcomes.len() - w;
            g.outcomes.drain(..n);
        }
        let failed = g.outcomes.iter().filter(|o| !**o).count();
        if g.outcomes.len() >= self.spec.min_calls as usize
            && failed as f64 >= self.spec.failure_rate * g.outcomes.len() as f64
        {
            g.state = BreakerState::Open;
            g.opened_at = Some(tokio::time::Instant::now());
        }
    }
}
