//! Circuit breaker: a count-based sliding window over the last attempts' outcomes, lock-free.
//!
//! - **Closed**: calls go through; each reported outcome enters a window of the last `window`
//!   outcomes. Once at least `min_calls` were seen and `failures / seen >= failure_rate`, the
//!   breaker opens.
//! - **Open**: calls fail fast with [`BreakerOpen`] for `open_for`. The first call after that
//!   turns the breaker half-open and is its first probe.
//! - **HalfOpen**: exactly `half_open_calls` probes go through; other calls are refused while
//!   they are in flight. All probes succeed: closed, with an empty window. Any probe fails: open
//!   again for `open_for`. A probe reported as ignored (or dropped unreported before
//!   `slow_call_duration`) frees its slot for another probe.
//!
//! With `window_for`, the window holds the attempts of the last `window_for` instead of the last
//! `window`; with `slow_call_duration`, a success at least that slow counts as slow and
//! the breaker also opens at `slow_call_rate` slow calls (see `breaker_window.rs`).
//!
//! Only failures that say the downstream is unhealthy are reported as failures; the session
//! reports permanent failures (a 404, a decode error) as ignored, which count as neither.
//!
//! # Representation
//!
//! The whole state is one `AtomicU64`, changed only by compare-and-swap, so taking a permit
//! never locks:
//!
//! ```text
//! 63..62 state | 61..54 generation | closed:    53..48 outcomes seen, 47..0 outcomes (1 = failure)
//!                                  | open:      47..0 opened at (ms since the breaker was made)
//!                                  | half-open: 31..16 probes succeeded, 15..0 probes admitted
//! ```
//!
//! The generation changes on every transition; a permit carries the generation it was issued
//! in, and a report from an earlier generation (a call that started before the breaker opened)
//! changes nothing. (It wraps after 256 transitions: a permit would have to stay out across
//! 128 open and half-open cycles to be taken for a current one.)
//!
//! A window of up to [`BreakerSpec::MAX_ATOMIC_WINDOW`] outcomes lives in the word itself as a
//! shift register: the newest outcome enters at bit 0 and the oldest falls off at bit `window`,
//! so the failures in the window are a popcount. A longer window keeps its outcomes in a ring
//! behind a mutex, taken only to record an outcome (never across an await); the state still
//! changes only by compare-and-swap on the word.

use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::breaker_window::{Fast, Window};
use crate::invalid::InvalidPolicy;

/// Settings of a circuit breaker (`[breakers.NAME]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSpec {
    /// Open when at least this share of the window failed, in `(0, 1]`.
    pub failure_rate: f64,
    /// ... once at least this many outcomes were seen, `1..=window`: attempts, a retry's as
    /// one of its own.
    pub min_calls: u32,
    /// How many of the last attempts' outcomes the window holds,
    /// `1..=`[`BreakerSpec::MAX_WINDOW`].
    pub window: u32,
    /// How long an open breaker fails fast; more than zero, counted in whole milliseconds
    /// (rounded up).
    pub open_for: Duration,
    /// Probes a half-open breaker lets through, `1..=`[`BreakerSpec::MAX_HALF_OPEN_CALLS`].
    pub half_open_calls: u32,
    /// A time-based window: the attempts of the last `window_for` (1s..=1h) instead of the
    /// last `window`; zero: count-based.
    pub window_for: Duration,
    /// A success at least this slow counts as slow (shorter than the attempt timeout); zero:
    /// slowness is not watched.
    pub slow_call_duration: Duration,
    /// Open when at least this share of the window was slow, in `(0, 1]`.
    pub slow_call_rate: f64,
}

impl BreakerSpec {
    /// The built-in defaults: 50% of the last 20 attempts, at least 10 seen, open 30 s, 3 probes.
    pub const DEFAULT: BreakerSpec = BreakerSpec {
        failure_rate: resilience_spec::defaults::BREAKER_FAILURE_RATE,
        min_calls: resilience_spec::defaults::BREAKER_MIN_CALLS,
        window: resilience_spec::defaults::BREAKER_WINDOW,
        open_for: resilience_spec::defaults::BREAKER_OPEN_FOR,
        half_open_calls: resilience_spec::defaults::BREAKER_HALF_OPEN_CALLS,
        window_for: resilience_spec::defaults::BREAKER_WINDOW_FOR,
        slow_call_duration: resilience_spec::defaults::BREAKER_SLOW_CALL_DURATION,
        slow_call_rate: resilience_spec::defaults::BREAKER_SLOW_CALL_RATE,
    };

    /// The largest window.
    pub const MAX_WINDOW: u32 = *resilience_spec::bounds::BREAKER_COUNT.end();

    /// The largest window kept in the breaker's atomic word (48 bits of it); a longer one takes
    /// a short lock to record an outcome.
    pub const MAX_ATOMIC_WINDOW: u32 = 48;

    /// The largest number of half-open probes.
    pub const MAX_HALF_OPEN_CALLS: u32 = *resilience_spec::bounds::BREAKER_COUNT.end();

    /// Checks the ranges documented on each field.
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        use resilience_spec::rules;
        let bad = |b: resilience_spec::Broken| InvalidPolicy(b.to_string());
        rules::breaker_failure_rate(self.failure_rate).map_err(bad)?;
        rules::breaker_count("window", u64::from(self.window)).map_err(bad)?;
        rules::breaker_count("min_calls", u64::from(self.min_calls)).map_err(bad)?;
        rules::breaker_count("half_open_calls", u64::from(self.half_open_calls)).map_err(bad)?;
        if self.window_for.is_zero() {
            rules::breaker_min_calls(self.min_calls, self.window).map_err(bad)?;
        } else {
            rules::breaker_window_for(self.window_for).map_err(bad)?;
        }
        rules::breaker_slow_call_rate(self.slow_call_rate).map_err(bad)?;
        rules::timeout_nonzero("open_for", self.open_for).map_err(bad)?;
        Ok(())
    }
}

impl Default for BreakerSpec {
    fn default() -> Self {
        BreakerSpec::DEFAULT
    }
}

/// The state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls go through and are counted.
    Closed,
    /// Calls fail fast until `open_for` has passed.
    Open,
    /// A few probe calls go through; their outcome closes or reopens it.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half-open`.
    pub const fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Returned when the breaker refuses a call: open, or half-open with every probe slot taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerOpen;

impl fmt::Display for BreakerOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("circuit breaker open")
    }
}

impl std::error::Error for BreakerOpen {}

/// Permission for one attempt; give it back with the outcome ([`Breaker::on_success`],
/// [`Breaker::on_failure`], [`Breaker::on_ignored`]). Dropped unreported, it counts as ignored,
/// or, once it ran past `slow_call_duration`, as a slow call (a failed probe when half-open).
#[derive(Debug)]
#[must_use = "report the outcome, or the attempt counts as ignored"]
pub struct BreakerPermit<'a> {
    breaker: &'a Breaker,
    generation: u64,
    probe: bool,
    reported: bool,
    /// When the attempt becomes a slow call, when slowness is watched (its start plus
    /// `slow_call_duration`; `None` too when that is past what an `Instant` can hold).
    slow_at: Option<Instant>,
}

impl BreakerPermit<'_> {
    /// Whether this attempt is one of the half-open probes.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Its attempt was answered at `at`, judged now: slow or not by that answer's time, not
    /// by now (a hedged round that waited for a sibling after it).
    pub(crate) fn judged_at(&mut self, at: Instant) {
        if let Some(slow_at) = self.slow_at {
            self.slow_at = slow_at.checked_add(at.elapsed());
        }
    }

    /// Times slowness from `start`: the attempt whose answer the call took began then (a
    /// hedge, after the round's first attempt took the permit).
    pub(crate) fn started_at(&mut self, start: Instant) {
        if self.slow_at.is_some() {
            self.slow_at = start.checked_add(self.breaker.spec.slow_call_duration);
        }
    }

    #[inline]
    fn report(self, outcome: Outcome) {
        if outcome == Outcome::Success && self.success_changes_nothing() {
            // Nothing to report, and nothing for its drop to do.
            std::mem::forget(self);
            return;
        }
        // Rebound rather than a `mut self` parameter: measured 15 instructions a call fewer.
        let mut this = self;
        this.settle(outcome);
    }

    /// The common case: a success into a closed count window that is full and holds no
    /// failure, with no slow-call threshold, changes nothing (`report_at`, `record_long`): in
    /// the word, or behind the lock when the window is longer.
    #[inline]
    fn success_changes_nothing(&self) -> bool {
        if self.slow_at.is_some() || self.probe {
            return false;
        }
        let b = self.breaker;
        let w = b.word.load(Ordering::Acquire);
        state_bits(w) == CLOSED
            && generation(w) == self.generation
            && match b.long {
                None => ring(w) == 0 && seen(w) == u64::from(b.spec.window),
                Some(_) => b.long_clean.load(Ordering::Acquire) == self.generation,
            }
    }

    /// Reports the success of the attempt whose permit is in `slot`, and empties it: in the
    /// common case read where it is, not moved out first (a copy of a value just written in
    /// pieces waits for them).
    #[inline]
    pub(crate) fn succeed_in(slot: &mut Option<BreakerPermit<'_>>) {
        if slot
            .as_ref()
            .is_some_and(BreakerPermit::success_changes_nothing)
        {
            // Emptied without its drop, which would have nothing to do.
            std::mem::forget(slot.take());
            return;
        }
        if let Some(p) = slot.take() {
            p.report(Outcome::Success);
        }
    }

    /// Reports `outcome`, a success at least `slow_call_duration` slow counted as slow (as a
    /// failed probe when half-open).
    fn settle(&mut self, outcome: Outcome) {
        self.reported = true;
        // One clock read for the slow-call check and the time window, none for a count
        // window without a slow-call threshold.
        let end = (self.slow_at.is_some() || self.breaker.long.is_some()).then(Instant::now);
        let slow = outcome == Outcome::Success
            && matches!((self.slow_at, end), (Some(at), Some(end)) if end >= at);
        // A slow probe says the downstream is not well yet.
        let outcome = if slow && self.probe {
            Outcome::Failure
        } else {
            outcome
        };
        self.breaker
            .report_at(self.generation, self.probe, outcome, slow, end);
    }
}

impl Drop for BreakerPermit<'_> {
    fn drop(&mut self) {
        if self.reported {
            return;
        }
        // Dropped before its attempt ended (its caller gave up, or the body panicked): no
        // outcome, but an attempt already past `slow_call_duration` is a slow call however it
        // ends (a slow probe, a failed one). Callers whose own timeout is shorter than the
        // policy's would otherwise hide a hung dependency from a breaker watching slowness.
        let slow = self.slow_at.is_some_and(|at| Instant::now() >= at);
        if slow {
            self.settle(Outcome::Success);
        } else {
            self.breaker
                .report(self.generation, self.probe, Outcome::Ignored);
        }
    }
}

/// Whether a call is refused before it starts ([`Breaker::refuses_now`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// It goes ahead.
    No,
    /// Refused: open, or held open.
    Refused,
    /// Half-open with every probe running: refused, unless an enclosing call holds the
    /// probe (a call nested in it runs under its permit).
    UnlessHeld,
}

/// A copy of a breaker's state and counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerSnapshot {
    /// The state now.
    pub state: BreakerState,
    /// Transitions to open: from closed or half-open, or by hand ([`Breaker::force_open`]).
    pub opened: u64,
    /// Transitions from open to half-open.
    pub half_opened: u64,
    /// Transitions to closed: from half-open, or by hand from open or half-open
    /// ([`Breaker::reset`], [`Breaker::force_closed`]).
    pub closed: u64,
    /// Calls refused because the breaker was open or its probe slots were taken.
    pub rejected: u64,
    /// Outcomes in the window (closed state only, else 0).
    pub window_calls: u32,
    /// Failures among them.
    pub window_failures: u32,
    /// The state it is held in by hand ([`Breaker::force_open`], [`Breaker::force_closed`]).
    pub forced: Option<BreakerState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Success,
    Failure,
    Ignored,
}

// The packed word.
const STATE_SHIFT: u32 = 62;
const GEN_SHIFT: u32 = 54;
const GEN_MASK: u64 = 0xff;
const SEEN_SHIFT: u32 = 48;
const SEEN_MASK: u64 = 0x3f;
const LOW48: u64 = (1 << 48) - 1;
const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;

fn state_bits(w: u64) -> u64 {
    w >> STATE_SHIFT
}

fn generation(w: u64) -> u64 {
    (w >> GEN_SHIFT) & GEN_MASK
}

fn next_generation(w: u64) -> u64 {
    (generation(w) + 1) & GEN_MASK
}

fn closed(generation: u64, seen: u64, ring: u64) -> u64 {
    (CLOSED << STATE_SHIFT) | (generation << GEN_SHIFT) | (seen << SEEN_SHIFT) | ring
}

fn open(generation: u64, at_ms: u64) -> u64 {
    (OPEN << STATE_SHIFT) | (generation << GEN_SHIFT) | at_ms.min(LOW48)
}

fn half_open(generation: u64, succeeded: u64, admitted: u64) -> u64 {
    (HALF_OPEN << STATE_SHIFT) | (generation << GEN_SHIFT) | (succeeded << 16) | admitted
}

fn seen(w: u64) -> u64 {
    (w >> SEEN_SHIFT) & SEEN_MASK
}

fn ring(w: u64) -> u64 {
    w & LOW48
}

fn admitted(w: u64) -> u64 {
    w & 0xffff
}

fn succeeded(w: u64) -> u64 {
    (w >> 16) & 0xffff
}

fn decode(w: u64) -> BreakerState {
    match state_bits(w) {
        CLOSED => BreakerState::Closed,
        OPEN => BreakerState::Open,
        _ => BreakerState::HalfOpen,
    }
}

fn lock(m: &Mutex<Window>) -> MutexGuard<'_, Window> {
    // Every update leaves the window consistent, so a panic elsewhere cannot corrupt it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A circuit breaker shared by name.
#[derive(Debug)]
pub struct Breaker {
    name: &'static str,
    spec: BreakerSpec,
    origin: Instant,
    /// `open_for` in whole milliseconds, rounded up.
    open_ms: u64,
    ring_mask: u64,
    /// The window, when it is longer than the word can hold, time-based, or watches slow
    /// calls.
    long: Option<Mutex<Window>>,
    /// The closed generation whose long count window is full of successes, with neither a
    /// failure nor a slow call in it (`u64::MAX`: none): a success reported into it changes
    /// nothing (every slot holds the same), so it takes no lock. Set under the lock.
    long_clean: AtomicU64,
    /// A time window's successes counted without the lock while it holds neither a failure
    /// nor a slow call (`None`: not a time window).
    fast: Option<Fast>,
    word: AtomicU64,
    opened: AtomicU64,
    half_opened: AtomicU64,
    closed: AtomicU64,
    rejected: AtomicU64,
    /// Held by hand: [`FORCE_NONE`], [`FORCE_OPEN`] or [`FORCE_CLOSED`].
    force: AtomicU8,
}

const FORCE_NONE: u8 = 0;
const FORCE_OPEN: u8 = 1;
const FORCE_CLOSED: u8 = 2;

impl Breaker {
    /// A closed breaker.
    ///
    /// # Panics
    ///
    /// If `spec` is invalid (see [`BreakerSpec::validate`]); [`Breaker::try_new`] returns the
    /// error.
    pub fn new(name: &'static str, spec: BreakerSpec) -> Breaker {
        match Breaker::try_new(name, spec) {
            Ok(b) => b,
            Err(e) => panic!("breaker {name:?}: {e}"),
        }
    }

    /// A closed breaker, or why `spec` is invalid.
    pub fn try_new(name: &'static str, spec: BreakerSpec) -> Result<Breaker, InvalidPolicy> {
        spec.validate()?;
        Ok(Breaker {
            name,
            spec,
            origin: Instant::now(),
            open_ms: u64::try_from(spec.open_for.as_nanos().div_ceil(1_000_000))
                .unwrap_or(u64::MAX),
            ring_mask: (1u64 << spec.window.min(BreakerSpec::MAX_ATOMIC_WINDOW)) - 1,
            long: (spec.window > BreakerSpec::MAX_ATOMIC_WINDOW
                || !spec.window_for.is_zero()
                || !spec.slow_call_duration.is_zero())
            .then(|| Mutex::new(Window::new(spec.window, spec.window_for.as_millis() as u64))),
            long_clean: AtomicU64::new(u64::MAX),
            fast: (!spec.window_for.is_zero())
                .then(|| Fast::new(spec.window_for.as_millis() as u64)),
            word: AtomicU64::new(closed(0, 0, 0)),
            opened: AtomicU64::new(0),
            half_opened: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            force: AtomicU8::new(FORCE_NONE),
        })
    }

    /// The name it is shared under.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Its settings.
    pub fn spec(&self) -> BreakerSpec {
        self.spec
    }

    /// The current state. An open breaker whose `open_for` has passed still reads open until the
    /// next call turns it half-open.
    pub fn state(&self) -> BreakerState {
        decode(self.word.load(Ordering::Acquire))
    }

    /// Its state and counters now.
    pub fn snapshot(&self) -> BreakerSnapshot {
        let w = self.word.load(Ordering::Acquire);
        let (window_calls, window_failures) = match (state_bits(w), &self.long) {
            (CLOSED, None) => (seen(w) as u32, ring(w).count_ones()),
            (CLOSED, Some(long)) => {
                let long = lock(long);
                if long.generation == generation(w) {
                    let t = long.totals(self.now_ms_floor(), self.fast.as_ref());
                    (t.seen, t.failures)
                } else {
                    (0, 0)
                }
            }
            _ => (0, 0),
        };
        BreakerSnapshot {
            state: decode(w),
            opened: self.opened.load(Ordering::Relaxed),
            half_opened: self.half_opened.load(Ordering::Relaxed),
            closed: self.closed.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            window_calls,
            window_failures,
            forced: self.forced(),
        }
    }

    /// Holds the breaker open until [`reset`](Self::reset): every call fails fast, whatever
    /// the window says. For runbooks: take a failing dependency out of the path by hand.
    pub fn force_open(&self) {
        self.force.store(FORCE_OPEN, Ordering::Release);
        self.set_word(|w| open(next_generation(w), self.now_ms_ceil()));
        tracing::warn!(breaker = self.name, "circuit breaker forced open by hand");
    }

    /// Holds the breaker closed until [`reset`](Self::reset): every call goes through and no
    /// outcome opens it. For runbooks: a breaker that trips on a known, harmless failure.
    pub fn force_closed(&self) {
        self.force.store(FORCE_CLOSED, Ordering::Release);
        self.set_word(|w| closed(next_generation(w), 0, 0));
        tracing::warn!(breaker = self.name, "circuit breaker forced closed by hand");
    }

    /// Ends any forcing and starts afresh: closed, with an empty window.
    pub fn reset(&self) {
        // Closed first, then no longer held: a call that sees the hold gone sees the breaker
        // closed, not an open state older than `open_for` it would move to half-open (a
        // transition that never happened, and a probe whose outcome is lost).
        self.set_word(|w| closed(next_generation(w), 0, 0));
        self.force.store(FORCE_NONE, Ordering::Release);
        tracing::warn!(breaker = self.name, "circuit breaker reset by hand");
    }

    /// The state it is held in by hand, if any.
    pub fn forced(&self) -> Option<BreakerState> {
        match self.force.load(Ordering::Acquire) {
            FORCE_OPEN => Some(BreakerState::Open),
            FORCE_CLOSED => Some(BreakerState::Closed),
            _ => None,
        }
    }

    fn set_word(&self, next: impl Fn(u64) -> u64) {
        let mut w = self.word.load(Ordering::Acquire);
        loop {
            let n = next(w);
            match self
                .word
                .compare_exchange_weak(w, n, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    let (from, to) = (decode(w), decode(n));
                    if from != to {
                        self.transitioned(from, to);
                    }
                    return;
                }
                Err(now) => w = now,
            }
        }
    }

    /// Asks to make one attempt.
    pub fn try_acquire(&self) -> Result<BreakerPermit<'_>, BreakerOpen> {
        self.acquire(None)
    }

    /// Whether the breaker lets calls through freely: closed (or held closed). Not when it is
    /// open, held open, or half-open (its probes are counted): a hedge starts only then.
    pub(crate) fn is_closed(&self) -> bool {
        match self.force.load(Ordering::Relaxed) {
            FORCE_NONE => state_bits(self.word.load(Ordering::Acquire)) == CLOSED,
            FORCE_OPEN => false,
            _ => true,
        }
    }

    /// [`try_acquire`](Self::try_acquire) for an attempt starting at `now` (saves a clock read
    /// when the caller has one: the slow-call threshold counts from it).
    #[inline]
    pub fn try_acquire_at(&self, now: Instant) -> Result<BreakerPermit<'_>, BreakerOpen> {
        match self.closed_generation() {
            Some(g) => Ok(self.permit(g, false, Some(now))),
            None => self.acquire(Some(now)),
        }
    }

    /// [`try_acquire_at`](Self::try_acquire_at), the permit written into `slot` (a call's
    /// own) rather than returned: built where it is kept, not built aside and copied there.
    /// Whether it is a half-open probe (never on the closed breaker's inline path).
    #[inline]
    pub(crate) fn try_acquire_into<'a>(
        &'a self,
        now: Instant,
        slot: &mut Option<BreakerPermit<'a>>,
    ) -> Result<bool, BreakerOpen> {
        if let Some(g) = self.closed_generation() {
            *slot = Some(self.permit(g, false, Some(now)));
            return Ok(false);
        }
        let permit = self.acquire(Some(now))?;
        let probe = permit.probe;
        *slot = Some(permit);
        Ok(probe)
    }

    /// The generation of a breaker closed and not held either way: a permit is granted
    /// inline, without [`acquire`](Self::acquire)'s loop.
    #[inline]
    fn closed_generation(&self) -> Option<u64> {
        if self.force.load(Ordering::Relaxed) != FORCE_NONE {
            return None;
        }
        let w = self.word.load(Ordering::Acquire);
        (state_bits(w) == CLOSED).then(|| generation(w))
    }

    fn acquire(&self, now: Option<Instant>) -> Result<BreakerPermit<'_>, BreakerOpen> {
        // Acquire: the word `reset` wrote before it ended the hold is seen with the hold gone.
        match self.force.load(Ordering::Acquire) {
            FORCE_NONE => {}
            FORCE_OPEN => return self.reject(),
            // Held closed: a permit whose report changes nothing (see `report`).
            _ => return Ok(self.permit(u64::MAX, false, now)),
        }
        let mut w = self.word.load(Ordering::Acquire);
        loop {
            let (next, probe) = match state_bits(w) {
                CLOSED => return Ok(self.permit(generation(w), false, now)),
                OPEN => {
                    if self.still_open(ring(w), now) {
                        return self.reject();
                    }
                    (half_open(next_generation(w), 0, 1), true)
                }
                _ => {
                    if admitted(w) >= u64::from(self.spec.half_open_calls) {
                        return self.reject();
                    }
                    (w + 1, true)
                }
            };
            match self
                .word
                .compare_exchange_weak(w, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    if state_bits(w) == OPEN {
                        self.transitioned(BreakerState::Open, BreakerState::HalfOpen);
                    }
                    return Ok(self.permit(generation(next), probe, now));
                }
                Err(now) => w = now,
            }
        }
    }

    /// Whether a call would be refused now without looking further: the breaker is open (or
    /// held open) and not yet due for a probe, or half-open with every probe taken. Not
    /// counted: a call that is refused counts it with [`count_rejected`](Self::count_rejected).
    /// A breaker that is closed, half-open with a probe free or due for a probe says `false`:
    /// [`try_acquire`](Self::try_acquire) decides. Refused before its admission, a call takes
    /// no bulkhead slot or rate-limit permit and deposits nothing in the retry budget: it
    /// sends nothing.
    #[inline]
    pub(crate) fn refuses_now(&self) -> Refusal {
        // Acquire, as in `acquire`: the word `reset` wrote before it ended the hold is seen
        // with the hold gone.
        match self.force.load(Ordering::Acquire) {
            FORCE_NONE => {}
            FORCE_OPEN => return Refusal::Refused,
            _ => return Refusal::No,
        }
        let w = self.word.load(Ordering::Acquire);
        match state_bits(w) {
            CLOSED => Refusal::No,
            OPEN if self.still_open(ring(w), None) => Refusal::Refused,
            OPEN => Refusal::No,
            _ if admitted(w) >= u64::from(self.spec.half_open_calls) => Refusal::UnlessHeld,
            _ => Refusal::No,
        }
    }

    /// A call refused as [`refuses_now`](Self::refuses_now) said: counted.
    #[inline]
    pub(crate) fn count_rejected(&self) {
        let _ = self.reject::<()>();
    }

    /// The attempt succeeded.
    pub fn on_success(&self, permit: BreakerPermit<'_>) {
        debug_assert!(
            std::ptr::eq(self, permit.breaker),
            "permit of another breaker"
        );
        permit.report(Outcome::Success);
    }

    /// The attempt failed in a way that says the downstream is unhealthy.
    pub fn on_failure(&self, permit: BreakerPermit<'_>) {
        debug_assert!(
            std::ptr::eq(self, permit.breaker),
            "permit of another breaker"
        );
        permit.report(Outcome::Failure);
    }

    /// A failure that says nothing about the downstream's health (a 404, a 429, a decode
    /// error); but one at least `slow_call_duration` slow is a slow call, as an attempt its
    /// caller stopped waiting for is (a slow probe fails): a dependency that throttles slowly
    /// is slow.
    pub fn on_ignored(&self, permit: BreakerPermit<'_>) {
        debug_assert!(
            std::ptr::eq(self, permit.breaker),
            "permit of another breaker"
        );
        // Unreported, the permit's drop tells slow from not.
        drop(permit);
    }

    #[inline]
    fn permit(&self, generation: u64, probe: bool, now: Option<Instant>) -> BreakerPermit<'_> {
        BreakerPermit {
            breaker: self,
            generation,
            probe,
            reported: false,
            slow_at: if self.spec.slow_call_duration.is_zero() {
                None
            } else {
                now.unwrap_or_else(Instant::now)
                    .checked_add(self.spec.slow_call_duration)
            },
        }
    }

    fn reject<T>(&self) -> Result<T, BreakerOpen> {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        Err(BreakerOpen)
    }

    fn report(&self, permit_generation: u64, probe: bool, outcome: Outcome) {
        self.report_at(permit_generation, probe, outcome, false, None);
    }

    /// `end`: when the attempt ended, if the caller read the clock.
    fn report_at(
        &self,
        permit_generation: u64,
        probe: bool,
        outcome: Outcome,
        slow: bool,
        end: Option<Instant>,
    ) {
        let mut w = self.word.load(Ordering::Acquire);
        loop {
            // A permit from before the last transition says nothing about the present.
            if generation(w) != permit_generation {
                return;
            }
            let next = match (state_bits(w), probe, outcome) {
                (CLOSED, false, Outcome::Success | Outcome::Failure) if self.long.is_some() => {
                    return self.record_long(
                        permit_generation,
                        outcome == Outcome::Failure,
                        slow,
                        end,
                    );
                }
                (CLOSED, false, Outcome::Success | Outcome::Failure) => {
                    let fail = u64::from(outcome == Outcome::Failure);
                    let (ring_was, seen_was) = (ring(w), seen(w));
                    let ring = ((ring_was << 1) | fail) & self.ring_mask;
                    let seen = (seen_was + 1).min(u64::from(self.spec.window));
                    // A success into a full window that holds no failure changes nothing:
                    // the common case, and no write to the shared word.
                    if fail == 0 && ring == ring_was && seen == seen_was {
                        return;
                    }
                    if self.trips(seen as u32, ring.count_ones()) {
                        open(next_generation(w), self.now_ms_ceil())
                    } else {
                        closed(generation(w), seen, ring)
                    }
                }
                (HALF_OPEN, true, Outcome::Success) => {
                    let succeeded = succeeded(w) + 1;
                    if succeeded >= u64::from(self.spec.half_open_calls) {
                        closed(next_generation(w), 0, 0)
                    } else {
                        half_open(generation(w), succeeded, admitted(w))
                    }
                }
                (HALF_OPEN, true, Outcome::Failure) => open(next_generation(w), self.now_ms_ceil()),
                (HALF_OPEN, true, Outcome::Ignored) => {
                    half_open(generation(w), succeeded(w), admitted(w).saturating_sub(1))
                }
                _ => return,
            };
            match self
                .word
                .compare_exchange_weak(w, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    let (from, to) = (decode(w), decode(next));
                    if from != to {
                        self.transitioned(from, to);
                    }
                    return;
                }
                Err(now) => w = now,
            }
        }
    }

    /// Records an outcome in a window too long for the word.
    fn record_long(&self, permit_generation: u64, fail: bool, slow: bool, end: Option<Instant>) {
        // A success that was not slow, into a count window full of such (the breaker closed in
        // this generation: `report_at`): nothing changes (see `report`), no lock.
        if !fail && !slow && self.long_clean.load(Ordering::Acquire) == permit_generation {
            return;
        }
        // A success that was not slow, into a time window that holds neither a failure nor a
        // slow call: it can trip nothing, so it is only counted, without the lock. (One
        // reported by a permit of a generation that just ended, racing the reset of the
        // next, may be counted in that one: a success more in a window of many.)
        if !fail
            && !slow
            && let Some(f) = &self.fast
            && f.clean.load(Ordering::Acquire) == permit_generation
        {
            f.add(self.ms_floor_at(end));
            return;
        }
        let Some(long) = &self.long else { return };
        let mut long = lock(long);
        // Under this lock the word cannot leave the closed state: only this function moves a
        // closed breaker with a long window, and the other transitions start from open or
        // half-open.
        let w = self.word.load(Ordering::Acquire);
        if state_bits(w) != CLOSED || generation(w) != permit_generation {
            return;
        }
        if long.generation != permit_generation {
            long.reset(permit_generation, self.fast.as_ref());
        }
        let t = long.push(|| self.ms_floor_at(end), fail, slow, self.fast.as_ref());
        if let Some(f) = &self.fast {
            let clean = if t.failures == 0 && t.slow == 0 {
                permit_generation
            } else {
                u64::MAX
            };
            if f.clean.load(Ordering::Relaxed) != clean {
                f.clean.store(clean, Ordering::Release);
            }
        }
        // Written only when it changes: a write on every outcome moved its cache line, which
        // may be the one of the word every permit reads, from core to core.
        let clean = if long.full_and_clean(t) {
            permit_generation
        } else {
            u64::MAX
        };
        if self.long_clean.load(Ordering::Relaxed) != clean {
            self.long_clean.store(clean, Ordering::Release);
        }
        let slow_trips = !self.spec.slow_call_duration.is_zero()
            && t.seen >= self.spec.min_calls
            && f64::from(t.slow) / f64::from(t.seen) >= self.spec.slow_call_rate;
        if self.trips(t.seen, t.failures) || slow_trips {
            let next = open(next_generation(w), self.now_ms_ceil());
            if self
                .word
                .compare_exchange(w, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.transitioned(BreakerState::Closed, BreakerState::Open);
            }
        }
    }

    fn trips(&self, seen: u32, failures: u32) -> bool {
        seen >= self.spec.min_calls
            && f64::from(failures) / f64::from(seen) >= self.spec.failure_rate
    }

    fn transitioned(&self, from: BreakerState, to: BreakerState) {
        let counter = match to {
            BreakerState::Open => &self.opened,
            BreakerState::HalfOpen => &self.half_opened,
            BreakerState::Closed => &self.closed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::breaker_transition(self.name, from, to);
        let (name, opened) = (self.name, to == BreakerState::Open);
        let (from, to) = (from.as_str(), to.as_str());
        if opened {
            tracing::warn!(breaker = name, from, to, "circuit breaker state changed");
        } else {
            tracing::info!(breaker = name, from, to, "circuit breaker state changed");
        }
    }

    /// Whether a breaker that opened `opened_at` ms after the origin is still open at `now`
    /// (the clock when `None`): the same as `ms_floor_at(now) - opened_at < open_ms` (`open_ms`
    /// is at least 1), as one `Instant` addition and comparison, cheaper than measuring the
    /// duration since the origin on every refused call. An open time too long to be an
    /// `Instant` never ends.
    fn still_open(&self, opened_at: u64, now: Option<Instant>) -> bool {
        let open_until = self.origin.checked_add(Duration::from_millis(
            opened_at.saturating_add(self.open_ms),
        ));
        open_until.is_none_or(|until| now.unwrap_or_else(Instant::now) < until)
    }

    fn since_origin(&self) -> Duration {
        Instant::now().saturating_duration_since(self.origin)
    }

    fn now_ms_floor(&self) -> u64 {
        self.since_origin().as_millis() as u64
    }

    /// Milliseconds from the origin to `at`, rounded down; to now when the caller has no instant.
    fn ms_floor_at(&self, at: Option<Instant>) -> u64 {
        match at {
            Some(t) => t.saturating_duration_since(self.origin).as_millis() as u64,
            None => self.now_ms_floor(),
        }
    }

    /// Rounded up, so that an open breaker never reopens early by a fraction of a millisecond.
    fn now_ms_ceil(&self) -> u64 {
        self.since_origin().as_nanos().div_ceil(1_000_000) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const SPEC: BreakerSpec = BreakerSpec {
        failure_rate: 0.5,
        min_calls: 4,
        window: 8,
        open_for: Duration::from_secs(30),
        half_open_calls: 2,
        window_for: Duration::ZERO,
        slow_call_duration: Duration::ZERO,
        slow_call_rate: 1.0,
    };

    fn ok(b: &Breaker) {
        let p = b.try_acquire().expect("closed");
        b.on_success(p);
    }

    fn fail(b: &Breaker) {
        let p = b.try_acquire().expect("closed");
        b.on_failure(p);
    }

    fn window(b: &Breaker) -> (u32, u32) {
        let s = b.snapshot();
        (s.window_calls, s.window_failures)
    }

    const TIME_SPEC: BreakerSpec = BreakerSpec {
        failure_rate: 0.5,
        min_calls: 10,
        window: 10,
        window_for: Duration::from_secs(10),
        ..SPEC
    };

    /// In a time window that holds no failure, successes are counted without the lock, and
    /// count as much as the locked ones: in the window's totals, in the failure rate's
    /// denominator, and out of the window when their bucket leaves it.
    #[tokio::test(start_paused = true)]
    async fn a_time_window_counts_the_successes_it_takes_no_lock_for() {
        let b = Breaker::new("t", TIME_SPEC);
        for _ in 0..10 {
            ok(&b);
        }
        // The first under the lock (the window found clean), the other nine without it.
        assert_eq!(
            b.fast.as_ref().unwrap().clean.load(Ordering::Relaxed),
            generation(b.word.load(Ordering::Relaxed))
        );
        assert_eq!(window(&b), (10, 0));
        // 9 failures in 19 calls: below 0.5; only if the nine successes counted.
        for _ in 0..9 {
            fail(&b);
        }
        assert_eq!(window(&b), (19, 9));
        assert_eq!(b.state(), BreakerState::Closed, "9 of 19 < 0.5");
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open, "10 of 20");

        // The successes leave the window with their bucket.
        let b = Breaker::new("t", TIME_SPEC);
        for _ in 0..10 {
            ok(&b);
        }
        advance(Duration::from_secs(10)).await;
        for _ in 0..5 {
            fail(&b);
        }
        // Only the five failures are in the window now: 5 calls, below min_calls.
        assert_eq!(window(&b), (5, 5));
        assert_eq!(b.state(), BreakerState::Closed);
        // Clean again once the failures have left: successes go without the lock again.
        advance(Duration::from_secs(10)).await;
        ok(&b);
        ok(&b);
        assert_eq!(window(&b), (2, 0));
    }

    /// Successes from several threads at once, into a clean time window: every one counted.
    #[test]
    fn a_time_windows_lock_free_successes_are_exact_across_threads() {
        let b = Breaker::new("t", TIME_SPEC);
        ok(&b);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        ok(&b);
                    }
                });
            }
        });
        // All within one window of 10 s (unless this machine stalled for seconds).
        assert_eq!(window(&b), (40_001, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn stays_closed_below_min_calls() {
        let b = Breaker::new("t", SPEC);
        for _ in 0..3 {
            fail(&b);
        }
        assert_eq!(b.state(), BreakerState::Closed, "3 of min_calls 4");
        assert_eq!(window(&b), (3, 3));
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_at_the_failure_rate_not_below() {
        let b = Breaker::new("t", SPEC);
        for _ in 0..5 {
            ok(&b);
        }
        for _ in 0..4 {
            fail(&b);
        }
        // Window of 8: the oldest success fell off; 4 of 8 failed = 0.5.
        assert_eq!(b.state(), BreakerState::Open);

        let b = Breaker::new("t", SPEC);
        for _ in 0..5 {
            ok(&b);
        }
        for _ in 0..3 {
            fail(&b);
        }
        assert_eq!(window(&b), (8, 3));
        assert_eq!(b.state(), BreakerState::Closed, "3 of 8 < 0.5");
    }

    #[tokio::test(start_paused = true)]
    async fn rate_compares_exactly() {
        // 3 / 10 must meet 0.3 although 0.3 * 10 is 3.0000000000000004 in floating point.
        let b = Breaker::new(
            "t",
            BreakerSpec {
                failure_rate: 0.3,
                min_calls: 10,
                window: 10,
                ..SPEC
            },
        );
        for _ in 0..7 {
            ok(&b);
        }
        for _ in 0..3 {
            fail(&b);
        }
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn old_failures_slide_out_of_the_window() {
        let b = Breaker::new("t", SPEC);
        for _ in 0..5 {
            ok(&b);
        }
        for _ in 0..3 {
            fail(&b);
        }
        assert_eq!(window(&b), (8, 3));
        for _ in 0..8 {
            ok(&b);
        }
        assert_eq!(window(&b), (8, 0));
        for _ in 0..3 {
            fail(&b);
        }
        assert_eq!(window(&b), (8, 3));
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn ignored_outcomes_count_as_neither() {
        let b = Breaker::new("t", SPEC);
        for _ in 0..10 {
            let p = b.try_acquire().unwrap();
            b.on_ignored(p);
            let _dropped = b.try_acquire().unwrap();
        }
        assert_eq!(window(&b), (0, 0));
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn fails_fast_for_open_for_then_half_opens() {
        let b = Breaker::new("t", SPEC);
        for _ in 0..4 {
            fail(&b);
        }
        assert!(b.try_acquire().is_err());
        advance(SPEC.open_for - Duration::from_millis(1)).await;
        assert!(b.try_acquire().is_err(), "1 ms early");
        // The check at a call's start (before any session) agrees, to the millisecond.
        assert_eq!(
            b.refuses_now(),
            Refusal::Refused,
            "1 ms early, at the call's start"
        );
        assert_eq!(b.state(), BreakerState::Open);
        advance(Duration::from_millis(1)).await;
        assert_eq!(
            b.refuses_now(),
            Refusal::No,
            "the open time is over: the call may start"
        );
        let p = b.try_acquire().expect("first probe");
        assert!(p.is_probe());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        drop(p);
        // The two refused acquisitions; `refuses_now` only says (its caller counts a refusal).
        assert_eq!(b.snapshot().rejected, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_admits_exactly_half_open_calls() {
        let b = Breaker::new("t", SPEC);
        for _ in 0..4 {
            fail(&b);
        }
        advance(SPEC.open_for).await;
        let p1 = b.try_acquire().unwrap();
        let p2 = b.try_acquire().unwrap();
        assert!(b.try_acquire().is_err(), "both probe slots in flight");
        b.on_success(p1);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(
            b.try_acquire().is_err(),
            "a finished probe does not free its slot"
        );
        b.on_success(p2);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(window(&b), (0, 0), "closing starts an empty window");
        let s = b.snapshot();
        assert_eq!((s.opened, s.half_opened, s.closed), (1, 1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_open_for() {
        let b = Breaker::new("t", SPEC);
        for _ in 0..4 {
            fail(&b);
        }
        advance(SPEC.open_for).await;
        let p1 = b.try_acquire().unwrap();
        let p2 = b.try_acquire().unwrap();
        b.on_success(p1);
        advance(Duration::from_secs(5)).await;
        b.on_failure(p2);
        assert_eq!(b.state(), BreakerState::Open);
        advance(SPEC.open_for - Duration::from_millis(1)).await;
        assert!(
            b.try_acquire().is_err(),
            "open_for counts from the failed probe"
        );
        advance(Duration::from_millis(1)).await;
        assert!(b.try_acquire().is_ok());
        let s = b.snapshot();
        assert_eq!((s.opened, s.half_opened, s.closed), (2, 2, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreported_probe_frees_its_slot() {
        let b = Breaker::new("t", SPEC);
        for _ in 0..4 {
            fail(&b);
        }
        advance(SPEC.open_for).await;
        let p1 = b.try_acquire().unwrap();
        let p2 = b.try_acquire().unwrap();
        drop(p2);
        let p3 = b.try_acquire().expect("the dropped probe's slot");
        b.on_ignored(p3);
        let p4 = b.try_acquire().expect("the ignored probe's slot");
        assert!(b.try_acquire().is_err());
        b.on_success(p1);
        b.on_success(p4);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn reports_from_before_a_transition_are_ignored() {
        let b = Breaker::new("t", SPEC);
        let stale: Vec<_> = (0..6).map(|_| b.try_acquire().unwrap()).collect();
        for _ in 0..4 {
            fail(&b);
        }
        assert_eq!(b.state(), BreakerState::Open);
        advance(SPEC.open_for).await;
        let p1 = b.try_acquire().unwrap();
        // Calls that started while closed finish now: none of them is a probe.
        for (i, p) in stale.into_iter().enumerate() {
            if i % 2 == 0 {
                b.on_success(p);
            } else {
                b.on_failure(p);
            }
        }
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let p2 = b.try_acquire().unwrap();
        assert!(b.try_acquire().is_err());
        b.on_success(p1);
        b.on_success(p2);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(window(&b), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn one_probe_and_full_rate() {
        let b = Breaker::new(
            "t",
            BreakerSpec {
                failure_rate: 1.0,
                min_calls: 1,
                window: 1,
                open_for: Duration::from_millis(1),
                half_open_calls: 1,
                ..BreakerSpec::DEFAULT
            },
        );
        ok(&b);
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
        advance(Duration::from_millis(1)).await;
        let p = b.try_acquire().unwrap();
        assert!(b.try_acquire().is_err());
        b.on_success(p);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn largest_atomic_window() {
        let b = Breaker::new(
            "t",
            BreakerSpec {
                failure_rate: 0.5,
                min_calls: 48,
                window: 48,
                ..SPEC
            },
        );
        for _ in 0..100 {
            ok(&b);
        }
        for _ in 0..23 {
            fail(&b);
        }
        assert_eq!(window(&b), (48, 23));
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn generation_wraps_without_harm() {
        let b = Breaker::new(
            "t",
            BreakerSpec {
                failure_rate: 1.0,
                min_calls: 1,
                window: 1,
                open_for: Duration::from_millis(1),
                half_open_calls: 1,
                ..BreakerSpec::DEFAULT
            },
        );
        // Each cycle is three transitions: 300 cycles wrap the 8-bit generation several times.
        for _ in 0..300 {
            fail(&b);
            advance(Duration::from_millis(1)).await;
            let p = b.try_acquire().unwrap();
            b.on_success(p);
        }
        let s = b.snapshot();
        assert_eq!(s.state, BreakerState::Closed);
        assert_eq!((s.opened, s.half_opened, s.closed), (300, 300, 300));
    }

    #[tokio::test(start_paused = true)]
    async fn long_window_takes_the_locked_path() {
        let b = Breaker::new(
            "t",
            BreakerSpec {
                failure_rate: 0.5,
                min_calls: 100,
                window: 100,
                ..SPEC
            },
        );
        assert!(b.long.is_some());
        for _ in 0..150 {
            ok(&b);
        }
        for _ in 0..49 {
            fail(&b);
        }
        assert_eq!(window(&b), (100, 49));
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
        advance(SPEC.open_for).await;
        let (p1, p2) = (b.try_acquire().unwrap(), b.try_acquire().unwrap());
        b.on_success(p1);
        b.on_success(p2);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(window(&b), (0, 0), "a new window after closing");
        fail(&b);
        assert_eq!(window(&b), (1, 1));
    }

    /// A count window watching slow calls, full of fast successes (reported without the lock):
    /// a slow call into it counts, and leaves it only after `window` more calls.
    #[tokio::test(start_paused = true)]
    async fn a_slow_call_into_a_window_full_of_fast_ones_stays_its_length() {
        let b = Breaker::new(
            "t",
            BreakerSpec {
                failure_rate: 1.0,
                min_calls: 10,
                window: 10,
                slow_call_duration: Duration::from_millis(100),
                slow_call_rate: 0.3,
                ..SPEC
            },
        );
        let slow = async |b: &Breaker| {
            let p = b.try_acquire().expect("closed");
            advance(Duration::from_millis(150)).await;
            b.on_success(p);
        };
        for _ in 0..20 {
            ok(&b);
        }
        slow(&b).await;
        for _ in 0..9 {
            ok(&b);
        }
        slow(&b).await;
        slow(&b).await;
        // The last ten: seven fast, two slow (the first slow one has just left).
        assert_eq!(b.state(), BreakerState::Closed);
        slow(&b).await;
        // Three slow of ten.
        assert_eq!(b.state(), BreakerState::Open);
    }

    /// What the breaker should do, written the obvious way, for one caller at a time.
    struct Model {
        spec: BreakerSpec,
        outcomes: std::collections::VecDeque<bool>,
        state: BreakerState,
        opened_at: Instant,
        succeeded: u32,
    }

    impl Model {
        fn acquire(&mut self) -> bool {
            match self.state {
                BreakerState::Closed => true,
                BreakerState::Open if self.opened_at.elapsed() >= self.spec.open_for => {
                    self.state = BreakerState::HalfOpen;
                    self.succeeded = 0;
                    true
                }
                BreakerState::Open => false,
                BreakerState::HalfOpen => true,
            }
        }

        fn report(&mut self, outcome: Outcome) {
            match (self.state, outcome) {
                (_, Outcome::Ignored) => {}
                (BreakerState::Closed, _) => {
                    self.outcomes.push_back(outcome == Outcome::Failure);
                    if self.outcomes.len() > self.spec.window as usize {
                        self.outcomes.pop_front();
                    }
                    let (n, f) = self.window();
                    if n >= self.spec.min_calls
                        && f64::from(f) / f64::from(n) >= self.spec.failure_rate
                    {
                        self.open();
                    }
                }
                (BreakerState::HalfOpen, Outcome::Success) => {
                    self.succeeded += 1;
                    if self.succeeded == self.spec.half_open_calls {
                        self.state = BreakerState::Closed;
                        self.outcomes.clear();
                    }
                }
                (BreakerState::HalfOpen, Outcome::Failure) => self.open(),
                (BreakerState::Open, _) => unreachable!("no permit while open"),
            }
        }

        fn open(&mut self) {
            self.state = BreakerState::Open;
            self.opened_at = Instant::now();
        }

        fn window(&self) -> (u32, u32) {
            if self.state != BreakerState::Closed {
                return (0, 0);
            }
            let n = self.outcomes.len() as u32;
            (n, self.outcomes.iter().filter(|f| **f).count() as u32)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn matches_the_model_for_every_window_length() {
        let mut rng = fastrand::Rng::with_seed(7);
        for len in [1, 2, 7, 20, 47, 48, 49, 64, 100, 1024] {
            for failure_rate in [0.2, 0.5, 1.0] {
                let spec = BreakerSpec {
                    failure_rate,
                    min_calls: rng.u32(1..=len),
                    window: len,
                    open_for: Duration::from_millis(rng.u64(1..50)),
                    half_open_calls: rng.u32(1..4),
                    ..BreakerSpec::DEFAULT
                };
                let b = Breaker::new("model", spec);
                let mut m = Model {
                    spec,
                    outcomes: Default::default(),
                    state: BreakerState::Closed,
                    opened_at: Instant::now(),
                    succeeded: 0,
                };
                for step in 0..4000 {
                    // Phases of health, sickness, and full health (a window full of
                    // successes, reported without the lock, then a failure into it).
                    let fail_percent = match (step / 600) % 3 {
                        0 => 15,
                        1 => 85,
                        _ => 0,
                    };
                    if rng.u8(..10) == 0 {
                        advance(Duration::from_millis(rng.u64(0..20))).await;
                    }
                    let permit = b.try_acquire();
                    assert_eq!(permit.is_ok(), m.acquire(), "{spec:?} step {step}");
                    if let Ok(p) = permit {
                        let outcome = match rng.u8(..100) {
                            x if x < 5 => Outcome::Ignored,
                            x if x < fail_percent => Outcome::Failure,
                            _ => Outcome::Success,
                        };
                        m.report(outcome);
                        match outcome {
                            Outcome::Success => b.on_success(p),
                            Outcome::Failure => b.on_failure(p),
                            Outcome::Ignored => b.on_ignored(p),
                        }
                    }
                    assert_eq!(b.state(), m.state, "{spec:?} step {step}");
                    assert_eq!(window(&b), m.window(), "{spec:?} step {step}");
                }
            }
        }
    }

    #[test]
    fn spec_ranges() {
        assert!(BreakerSpec::DEFAULT.validate().is_ok());
        let bad = [
            BreakerSpec {
                failure_rate: 0.0,
                ..SPEC
            },
            BreakerSpec {
                failure_rate: 1.5,
                ..SPEC
            },
            BreakerSpec {
                failure_rate: f64::NAN,
                ..SPEC
            },
            BreakerSpec { window: 0, ..SPEC },
            BreakerSpec {
                window: 1025,
                ..SPEC
            },
            BreakerSpec {
                min_calls: 0,
                ..SPEC
            },
            BreakerSpec {
                min_calls: 9,
                ..SPEC
            },
            BreakerSpec {
                open_for: Duration::ZERO,
                ..SPEC
            },
            BreakerSpec {
                half_open_calls: 0,
                ..SPEC
            },
            BreakerSpec {
                half_open_calls: 1025,
                ..SPEC
            },
        ];
        for spec in bad {
            assert!(spec.validate().is_err(), "{spec:?}");
            assert!(Breaker::try_new("t", spec).is_err());
        }
    }
}
