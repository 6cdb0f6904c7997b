//! Adaptive concurrency limit: a bound on the calls in flight that follows the dependency's
//! latency, an alternative to the fixed [`Bulkhead`](crate::bulkhead::Bulkhead).
//!
//! AIMD (additive increase, multiplicative decrease): an attempt answered faster than
//! `latency` raises the limit by `1 / limit` (about one more slot per limit's worth of fast
//! answers), as long as the limit is in use (at least half of it taken when the call started:
//! a quiet client does not grow a limit it never tests). An attempt that timed out, failed
//! transiently (connect, reset, 408, 429, a 5xx but 501, 505, 506, 508, 510 and 511) or
//! answered slower than `latency` multiplies the
//! limit by `backoff`, no lower than `min`, at most once per round trip: a decrease is applied
//! only by an attempt that started after the previous decrease, so the calls that were already
//! in flight when the dependency slowed down do not lower it again each.
//!
//! A slot is held for the whole call, like a bulkhead's. When the limit is reached a call waits
//! up to `max_wait` within its deadline, in the order the calls asked (a call that just ended
//! and asks again does not overtake those waiting), else fails fast with
//! [`ErrorKind::BulkheadFull`](crate::ErrorKind::BulkheadFull): to the caller this is a bulkhead
//! whose size moves. Without a wait (`max_wait` zero, the default) the slots are the count of
//! calls in flight, taken below the limit's whole part as it is read. With a wait they are a
//! semaphore's permits: a higher limit adds permits, a lower one takes free permits away and
//! keeps the rest as a debt paid by the next slots given back. The hot path is a few atomics
//! (and, with a wait, the semaphore's lock when a slot is given back): no allocation.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use crate::classify::Class;
use crate::invalid::InvalidPolicy;

/// How the limit adapts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConcurrencyKind {
    /// Additive increase on fast answers, multiplicative decrease on overload.
    Aimd,
}

/// Settings of an adaptive concurrency limit (`[concurrency_limits.NAME]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConcurrencySpec {
    /// How the limit adapts.
    pub kind: ConcurrencyKind,
    /// The limit at start, in `min..=max`.
    pub initial: u32,
    /// The lowest the limit goes, at least 1.
    pub min: u32,
    /// The highest the limit goes, at most 1000000.
    pub max: u32,
    /// An answer at least this slow counts as overload; shorter than the attempt timeout.
    pub latency: Duration,
    /// The factor the limit is multiplied by on overload, strictly between 0 and 1.
    pub backoff: f64,
    /// How long a call waits for a slot before failing fast (zero: not at all).
    pub max_wait: Duration,
}

impl ConcurrencySpec {
    /// Checks the ranges documented on each field (the latency against the timeout and the
    /// wait against the deadline are the policy's checks).
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        use resilience_spec::rules;
        let bad = |b: resilience_spec::Broken| InvalidPolicy(b.to_string());
        for (k, n) in [
            ("initial", self.initial),
            ("min", self.min),
            ("max", self.max),
        ] {
            rules::concurrency_count(k, u64::from(n)).map_err(bad)?;
        }
        rules::concurrency_order(self.min, self.initial, self.max).map_err(bad)?;
        rules::concurrency_backoff(self.backoff).map_err(bad)?;
        if self.latency.is_zero() {
            // The timeout here is only a bound the zero latency fails first.
            rules::concurrency_latency_within_timeout(self.latency, Duration::MAX, None)
                .map_err(bad)?;
        }
        Ok(())
    }
}

/// What one attempt said about the dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sample {
    /// Answered faster than the latency threshold.
    Fast,
    /// Timed out, failed transiently, or answered slower than the threshold.
    Overload,
    /// Says nothing about load (a permanent failure, a refusal by the caller's own protection).
    Ignored,
}

/// The next limit after `sample`: `limit + 1/limit` on a fast answer, `limit × backoff` on
/// overload, within `min..=max`.
pub fn aimd_next(limit: f64, sample: Sample, spec: &ConcurrencySpec) -> f64 {
    let (min, max) = (f64::from(spec.min), f64::from(spec.max));
    match sample {
        Sample::Fast => (limit + 1.0 / limit.max(1.0)).min(max),
        Sample::Overload => (limit * spec.backoff).max(min),
        Sample::Ignored => limit,
    }
}

/// Why [`ConcurrencyLimit::acquire_by`] gave no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refused {
    /// The limit was reached and no slot came free within `max_wait`.
    Full,
    /// The call's deadline came before a slot or the end of `max_wait`.
    Deadline,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refused::Full => "concurrency limit reached",
            Refused::Deadline => "deadline reached waiting under the concurrency limit",
        })
    }
}

/// A copy of a concurrency limit's state at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct ConcurrencySnapshot {
    /// The limit now (calls in flight allowed: its whole part).
    pub limit: f64,
    /// Calls holding a slot now.
    pub in_flight: u32,
    /// Slots granted since the start.
    pub admitted: u64,
    /// Calls refused since the start.
    pub rejected: u64,
    /// Times the limit was lowered.
    pub decreases: u64,
}

/// An adaptive concurrency limit shared by name.
#[derive(Debug)]
pub struct ConcurrencyLimit {
    name: &'static str,
    spec: ConcurrencySpec,
    /// The limit, an `f64`'s bits.
    limit: AtomicU64,
    /// Calls holding a slot. With no wait (`max_wait` zero, the default), the slots
    /// themselves: a slot is taken by raising it below the limit's whole part, given back by
    /// lowering it (no semaphore, whose every release takes its waiters' lock).
    in_flight: AtomicU32,
    /// With a wait, the slots, for calls to wait their turn: permits free plus held, less
    /// `debt`, is the limit's whole part.
    sem: Option<Semaphore>,
    /// Permits to take away as they are given back (the limit went down while they were held).
    debt: AtomicU32,
    epoch: Instant,
    /// When the limit was last lowered, in nanoseconds from `epoch`, before it negative
    /// (`NEVER`: never). Read by the clock of the runtime that lowered it: tokio's paused clocks
    /// (tests) differ from one runtime to the next, and a limit outlives them.
    last_decrease: AtomicI64,
    /// Slots granted, on every thread: striped.
    admitted: crate::counters::Striped,
    rejected: AtomicU64,
    decreases: AtomicU64,
    /// The gauges' keys, built once (recording then allocates nothing).
    #[cfg(feature = "metrics")]
    gauges: [metrics::Key; 2],
}

/// A slot, held for the whole call and given back on drop; it reports each attempt's outcome.
#[derive(Debug)]
pub struct ConcurrencyPermit {
    limit: &'static ConcurrencyLimit,
    /// The slot is held (given back on drop).
    held: bool,
    /// The semaphore's permit, when the limit has one.
    permit: Option<SemaphorePermit<'static>>,
    /// When the attempt in progress started.
    attempt_started: Instant,
    /// An attempt started and has not reported its outcome yet.
    running: bool,
    /// Calls in flight when this one took its slot, itself included.
    in_flight_at_start: u32,
}

impl ConcurrencyLimit {
    /// A limit at `spec.initial`.
    ///
    /// # Panics
    ///
    /// If `spec` is invalid (see [`ConcurrencySpec::validate`]); [`ConcurrencyLimit::try_new`]
    /// returns the error.
    pub fn new(name: &'static str, spec: ConcurrencySpec) -> ConcurrencyLimit {
        match ConcurrencyLimit::try_new(name, spec) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    /// A limit at `spec.initial`, or why `spec` is invalid.
    pub fn try_new(
        name: &'static str,
        spec: ConcurrencySpec,
    ) -> Result<ConcurrencyLimit, InvalidPolicy> {
        spec.validate()?;
        Ok(ConcurrencyLimit {
            name,
            spec,
            limit: AtomicU64::new(f64::from(spec.initial).to_bits()),
            in_flight: AtomicU32::new(0),
            sem: (!spec.max_wait.is_zero()).then(|| Semaphore::new(spec.initial as usize)),
            debt: AtomicU32::new(0),
            epoch: Instant::now(),
            last_decrease: AtomicI64::new(NEVER),
            admitted: Default::default(),
            rejected: AtomicU64::new(0),
            decreases: AtomicU64::new(0),
            #[cfg(feature = "metrics")]
            gauges: {
                use crate::telemetry::names;
                let labels: &'static [metrics::Label] =
                    Box::leak(Box::new([metrics::Label::new("concurrency_limit", name)]));
                [
                    metrics::Key::from_static_labels(names::CONCURRENCY_LIMIT, labels),
                    metrics::Key::from_static_labels(names::CONCURRENCY_IN_FLIGHT, labels),
                ]
            },
        })
    }

    /// Its name (the function's path when private to one function).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Its settings.
    pub fn spec(&self) -> ConcurrencySpec {
        self.spec
    }

    /// The limit now.
    pub fn limit(&self) -> f64 {
        f64::from_bits(self.limit.load(Ordering::Relaxed))
    }

    /// Calls allowed in flight under `limit`: its whole part, at least `min`.
    fn allowed(&self, limit: f64) -> u32 {
        (limit as u32).clamp(self.spec.min, self.spec.max)
    }

    /// Calls holding a slot now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Its limit, occupancy and counters now.
    pub fn snapshot(&self) -> ConcurrencySnapshot {
        ConcurrencySnapshot {
            limit: self.limit(),
            in_flight: self.in_flight(),
            admitted: self.admitted.get(),
            rejected: self.rejected.load(Ordering::Relaxed),
            decreases: self.decreases.load(Ordering::Relaxed),
        }
    }

    /// Takes a slot: at once if the limit is not reached, else after waiting up to `max_wait`
    /// behind the calls that asked first, no later than `deadline`.
    pub async fn acquire_by(
        &'static self,
        deadline: Instant,
    ) -> Result<ConcurrencyPermit, Refused> {
        self.acquire_at(deadline, Instant::now()).await
    }

    /// [`acquire_by`](Self::acquire_by) with the clock read at `now` (the call's start).
    /// A slot free now, or `None` (the caller then waits with `acquire_at`, which counts a
    /// refusal): the call's start takes its slot this way without a future. A slot given back
    /// while calls wait goes to the first of them, so this never overtakes them.
    #[inline]
    pub(crate) fn try_acquire_now(&'static self, now: Instant) -> Option<ConcurrencyPermit> {
        let (p, n) = self.take_now()?;
        Some(self.granted(p, n, now))
    }

    /// [`try_acquire_now`](Self::try_acquire_now), the permit written into `slot` (empty),
    /// where the session keeps it: a permit returned, then moved into the session, was copied
    /// in pieces just written, and the copy waited for them.
    pub(crate) fn try_acquire_into(
        &'static self,
        now: Instant,
        slot: &mut Option<ConcurrencyPermit>,
    ) -> bool {
        let Some((p, n)) = self.take_now() else {
            return false;
        };
        *slot = Some(self.granted(p, n, now));
        true
    }

    /// A slot free now: the semaphore's permit (when calls may wait) and the calls in flight
    /// with this one.
    #[inline]
    fn take_now(&'static self) -> Option<(Option<SemaphorePermit<'static>>, u32)> {
        match &self.sem {
            None => {
                let allowed = self.allowed(self.limit());
                Some((None, crate::bulkhead::take_below(&self.in_flight, allowed)?))
            }
            Some(sem) => {
                let p = loop {
                    if let Some(p) = self.unowed(sem.try_acquire().ok()?) {
                        break p;
                    }
                };
                Some((Some(p), self.in_flight.fetch_add(1, Ordering::Relaxed) + 1))
            }
        }
    }

    /// `n`: the calls in flight with this one.
    #[inline]
    fn granted(
        &'static self,
        p: Option<SemaphorePermit<'static>>,
        n: u32,
        now: Instant,
    ) -> ConcurrencyPermit {
        self.admitted.incr();
        self.gauge();
        ConcurrencyPermit {
            limit: self,
            held: true,
            permit: p,
            attempt_started: now,
            running: false,
            in_flight_at_start: n,
        }
    }

    async fn acquire_at(
        &'static self,
        deadline: Instant,
        now: Instant,
    ) -> Result<ConcurrencyPermit, Refused> {
        if let Some(p) = self.try_acquire_now(now) {
            return Ok(p);
        }
        let permit = match &self.sem {
            // No wait: refused at once.
            None => Err(Refused::Full),
            Some(sem) => loop {
                match crate::bulkhead::wait_for_slot(
                    sem,
                    self.spec.max_wait,
                    deadline,
                    || now,
                    (Refused::Full, Refused::Deadline),
                )
                .await
                {
                    Ok(p) => match self.unowed(p) {
                        Some(p) => break Ok((p, Instant::now())),
                        // Owed: the wait goes on (its `max_wait` from the call's start).
                        None => continue,
                    },
                    Err(why) => break Err(why),
                }
            },
        };
        match permit {
            Ok((p, now)) => {
                let n = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
                Ok(self.granted(Some(p), n, now))
            }
            Err(why) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                Err(why)
            }
        }
    }

    /// Sets the gauges, the limit and the calls in flight, whenever a call takes or gives back
    /// a slot and whenever the limit moves: a limit that stays at `initial` has its series too.
    #[inline]
    fn gauge(&self) {
        #[cfg(feature = "metrics")]
        {
            static META: metrics::Metadata<'static> =
                metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
            metrics::with_recorder(|r| {
                r.register_gauge(&self.gauges[0], &META).set(self.limit());
                // Read when set (again if it moved meanwhile), not a count from before: two
                // calls ending at once could otherwise leave the older count last.
                crate::telemetry::metrics::set_settled(
                    &r.register_gauge(&self.gauges[1], &META),
                    || self.in_flight(),
                );
            });
        }
    }

    /// `p`, unless the limit owes it (a lowered limit has permits still to take away): then
    /// taken away, paying that debt. A permit given back pays it so, and so does one taken
    /// from the queue that came back there without being given back (a waiter handed it,
    /// then dropped; tokio gives a cancelled wait's slot back).
    #[inline]
    fn unowed(&self, p: SemaphorePermit<'static>) -> Option<SemaphorePermit<'static>> {
        if self.debt.load(Ordering::Acquire) != 0
            && self
                .debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
                .is_ok()
        {
            p.forget();
            return None;
        }
        Some(p)
    }

    fn release(&self, permit: Option<SemaphorePermit<'static>>) {
        self.in_flight.fetch_sub(1, Ordering::Release);
        self.gauge();
        // A debt paid by the permit given back (taken away), else back to the queue.
        if let Some(permit) = permit.and_then(|p| self.unowed(p)) {
            drop(permit);
        }
    }

    /// Moves the limit by `sample` and the semaphore's permits with its whole part.
    /// Whether it moved.
    fn adapt(&self, sample: Sample) -> bool {
        let Ok(bits) = self
            .limit
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
                Some(aimd_next(f64::from_bits(bits), sample, &self.spec).to_bits())
            })
        else {
            return false;
        };
        let old = f64::from_bits(bits);
        let new = aimd_next(old, sample, &self.spec);
        if new != old {
            self.gauge();
        }
        // Without a semaphore, the slots follow the limit as it is read.
        let Some(sem) = &self.sem else {
            return new != old;
        };
        let (from, to) = (self.allowed(old), self.allowed(new));
        if to > from {
            for _ in from..to {
                // Pay a debt first: a permit still to take away need not be.
                if self
                    .debt
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
                    .is_err()
                {
                    sem.add_permits(1);
                }
            }
        } else if to < from {
            let k = (from - to) as usize;
            let taken = sem.forget_permits(k);
            if taken < k {
                self.debt.fetch_add((k - taken) as u32, Ordering::AcqRel);
            }
        }
        new != old
    }

    /// `t` in nanoseconds from the limit's `epoch`, negative before it (a runtime's paused
    /// clock behind the one it was made under), saturating.
    fn offset(&self, t: Instant) -> i64 {
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        if t >= self.epoch {
            nanos(t - self.epoch)
        } else {
            -nanos(self.epoch - t)
        }
    }

    /// Applies what an attempt that started at `started`, with `in_flight_at_start` calls in
    /// flight, said about the dependency.
    pub fn record(&self, sample: Sample, started: Instant, in_flight_at_start: u32) {
        match sample {
            Sample::Ignored => {}
            Sample::Fast => {
                // Grow only a limit in use: at least half of it taken.
                if f64::from(in_flight_at_start) * 2.0 < self.limit() {
                    return;
                }
                self.adapt(sample);
            }
            Sample::Overload => {
                // Once per round trip: only an attempt that started after the last decrease
                // saw the limit it left.
                let since = self.offset(started);
                let last = self.last_decrease.load(Ordering::Relaxed);
                let now = self.offset(Instant::now());
                // A decrease later than now was read by another clock (another runtime's
                // paused one, run ahead): it says nothing of this attempt's round trip.
                if last != NEVER && since < last && last <= now {
                    return;
                }
                if self
                    .last_decrease
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
                {
                    return; // Another attempt lowered it just now.
                }
                if self.adapt(sample) {
                    self.decreases.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

impl ConcurrencyPermit {
    /// An attempt starts now.
    pub(crate) fn attempt_started(&mut self, now: Instant) {
        self.attempt_started = now;
        self.running = true;
    }

    /// The attempt in progress ended with no sample to give (see `Session::after_failure`).
    pub(crate) fn attempt_ended(&mut self) {
        self.running = false;
    }

    /// Whether the attempt in progress has taken the latency threshold or more.
    fn slow(&self) -> bool {
        self.slow_to(Instant::now())
    }

    /// Whether the attempt, ended (answered) at `end`, took the latency threshold or longer.
    fn slow_to(&self, end: Instant) -> bool {
        end.saturating_duration_since(self.attempt_started) >= self.limit.spec.latency
    }

    /// Whether an attempt under this permit is in flight (begun, no outcome yet).
    pub(crate) fn running(&self) -> bool {
        self.running
    }

    /// The attempt in progress succeeded now: fast or slow against the latency threshold.
    pub(crate) fn on_success(&mut self) {
        self.running = false;
        self.on_sample(if self.slow() {
            Sample::Overload
        } else {
            Sample::Fast
        });
    }

    /// The attempt in progress failed with `class`; `cut`: its time was cut short by the
    /// deadline (a caller's, an enclosing attempt's), when it is the runtime's timeout;
    /// `answered`: the status of the response its last request got, if any; `ended`: when
    /// it was answered, if before now (a hedged round that waited for a sibling after it):
    /// its latency is judged to then.
    pub(crate) fn on_failure(
        &mut self,
        class: Class,
        cut: bool,
        answered: Option<u16>,
        ended: Option<Instant>,
    ) {
        let slow = ended.map_or_else(|| self.slow(), |e| self.slow_to(e));
        self.running = false;
        let sample = if class == Class::Timeout && cut {
            // Cut shorter than the latency threshold (a caller's short deadline): it says
            // only that the caller's time was short. A longer one is slower than the threshold.
            if slow {
                Sample::Overload
            } else {
                Sample::Ignored
            }
        } else if class.is_transient() {
            Sample::Overload
        } else if class == Class::Permanent
            && answered.is_some_and(resilience_spec::is_transient_status)
        {
            // A 5xx, a 429 or a 408 a `Classify` of the user's took for permanent: no sign of
            // health, however fast (nor, as for its breaker, a failure): only a slow one says
            // something (it grew the limit at every fast 503).
            if slow {
                Sample::Overload
            } else {
                Sample::Ignored
            }
        } else if matches!(class, Class::Status(_))
            || (class == Class::Permanent && answered.is_some())
        {
            // The dependency answered (a 404, a body the function refused): its latency
            // still says how loaded it is. A permanent failure with no answer (a name that
            // does not exist, a certificate refused, the body's own error before any request)
            // says nothing of it: the dependency was not reached.
            if slow { Sample::Overload } else { Sample::Fast }
        } else {
            Sample::Ignored
        };
        self.on_sample(sample);
    }

    fn on_sample(&self, sample: Sample) {
        self.limit
            .record(sample, self.attempt_started, self.in_flight_at_start);
    }
}

impl Drop for ConcurrencyPermit {
    fn drop(&mut self) {
        // Dropped during an attempt (its caller gave up): no outcome, but an attempt already
        // slower than the latency threshold is slow however it ends. Callers whose own timeout
        // is shorter than the policy's would otherwise hide a hung dependency from the limit.
        if self.running && self.slow() {
            self.on_sample(Sample::Overload);
        }
        if std::mem::take(&mut self.held) {
            self.limit.release(self.permit.take());
        }
    }
}

/// `ConcurrencyLimit::last_decrease` of a limit never lowered.
const NEVER: i64 = i64::MIN;

/// Takes a slot for a call of `shared`'s function, or the error the call ends with.
pub(crate) async fn admit(
    c: &'static ConcurrencyLimit,
    shared: &crate::registry::Resolved,
    deadline: Instant,
    started: Instant,
) -> Result<ConcurrencyPermit, crate::error::Error> {
    let why = match c.acquire_at(deadline, started).await {
        Ok(p) => return Ok(p),
        Err(why) => why,
    };
    if crate::counters::warn_enabled!()
        && let Some(suppressed) = shared
            .metrics
            .refusal_logged(crate::counters::Refusals::ConcurrencyLimit)
    {
        tracing::warn!(
            function = shared.function,
            policy = shared.policy,
            concurrency_limit = c.name(),
            limit = c.limit(),
            suppressed,
            "{why}: call rejected"
        );
    }
    Err(crate::session::slot_refused(
        shared,
        why == Refused::Full,
        started,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn spec(initial: u32, min: u32, max: u32, max_wait_ms: u64) -> ConcurrencySpec {
        ConcurrencySpec {
            kind: ConcurrencyKind::Aimd,
            initial,
            min,
            max,
            latency: Duration::from_millis(100),
            backoff: 0.5,
            max_wait: Duration::from_millis(max_wait_ms),
        }
    }

    fn leak(c: ConcurrencyLimit) -> &'static ConcurrencyLimit {
        Box::leak(Box::new(c))
    }

    #[test]
    fn additive_increase_multiplicative_decrease() {
        let s = spec(4, 2, 6, 0);
        // +1/limit per fast answer: four fast answers at 4 raise it by about one.
        let mut l = 4.0;
        for _ in 0..4 {
            l = aimd_next(l, Sample::Fast, &s);
        }
        assert!((l - 4.92).abs() < 0.01, "{l}");
        // ×backoff on overload, never under min.
        assert_eq!(aimd_next(5.0, Sample::Overload, &s), 2.5);
        assert_eq!(aimd_next(3.0, Sample::Overload, &s), 2.0);
        // Never over max.
        assert_eq!(aimd_next(6.0, Sample::Fast, &s), 6.0);
        assert_eq!(aimd_next(5.9, Sample::Fast, &s), 6.0);
        assert_eq!(aimd_next(3.0, Sample::Ignored, &s), 3.0);
        // From the top to the floor and back: growing from a to b takes about (b² - a²) / 2
        // fast answers.
        let mut l = 6.0;
        for _ in 0..3 {
            l = aimd_next(l, Sample::Overload, &s);
        }
        assert_eq!(l, 2.0);
        let mut fast = 0;
        while l < 6.0 {
            l = aimd_next(l, Sample::Fast, &s);
            fast += 1;
        }
        assert_eq!(fast, (6 * 6 - 2 * 2) / 2);
    }

    /// A slot that goes back to the queue without being released (a waiter handed it, then
    /// dropped) while a lowered limit still has permits to take away pays that debt: it let
    /// in a call more than the limit (2 in flight under a limit of 1).
    #[tokio::test(start_paused = true)]
    async fn a_slot_back_in_the_queue_pays_a_lowered_limits_debt() {
        let c = leak(ConcurrencyLimit::new("t", spec(2, 1, 4, 100)));
        let far = Instant::now() + Duration::from_secs(10);
        let mut a = c.acquire_by(far).await.unwrap();
        let b = c.acquire_by(far).await.unwrap();
        let mut waiting = Box::pin(c.acquire_by(far));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        // `b`'s slot is handed to the waiter; the limit comes down with no slot free to take.
        drop(b);
        a.attempt_started(Instant::now());
        a.on_failure(Class::Reset, false, None, None);
        assert_eq!(c.limit(), 1.0);
        assert_eq!(c.debt.load(Ordering::Relaxed), 1);
        // The waiter goes: its slot back in the queue.
        drop(waiting);
        let late = c
            .acquire_by(Instant::now() + Duration::from_millis(50))
            .await;
        assert!(
            late.is_err(),
            "{} in flight under a limit of 1",
            c.in_flight()
        );
        assert_eq!(c.in_flight(), 1);
        drop(a);
        // The limit's one slot is free again.
        let _one = c.acquire_by(far).await.unwrap();
        assert!(
            c.acquire_by(Instant::now() + Duration::from_millis(50))
                .await
                .is_err()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_the_limit_then_fails_fast() {
        let c = leak(ConcurrencyLimit::new("t", spec(2, 1, 4, 0)));
        let far = Instant::now() + Duration::from_secs(10);
        let p1 = c.acquire_by(far).await.unwrap();
        let _p2 = c.acquire_by(far).await.unwrap();
        assert_eq!(c.acquire_by(far).await.unwrap_err(), Refused::Full);
        drop(p1);
        let _p3 = c.acquire_by(far).await.unwrap();
        let s = c.snapshot();
        assert_eq!((s.in_flight, s.admitted, s.rejected), (2, 3, 1));
    }

    /// A timeout shorter than the latency threshold (an attempt a caller's short deadline
    /// cut) says nothing of the dependency's latency: ignored. A full one is slow.
    #[tokio::test(start_paused = true)]
    async fn a_timeout_shorter_than_the_latency_threshold_is_no_overload() {
        let c = leak(ConcurrencyLimit::new("t", spec(8, 1, 8, 0)));
        let far = Instant::now() + Duration::from_secs(10);
        let mut p = c.acquire_by(far).await.unwrap();
        advance(Duration::from_millis(40)).await;
        p.on_failure(Class::Timeout, true, None, None);
        assert_eq!((c.limit(), c.snapshot().decreases), (8.0, 0));
        drop(p);
        let mut p = c.acquire_by(far).await.unwrap();
        advance(Duration::from_millis(150)).await;
        p.on_failure(Class::Timeout, true, None, None);
        assert_eq!((c.limit(), c.snapshot().decreases), (4.0, 1));
        // A timeout of the body's own, or of a nested call's, however short, is the
        // dependency's: an overload.
        drop(p);
        let mut p = c.acquire_by(far).await.unwrap();
        advance(Duration::from_millis(40)).await;
        p.on_failure(Class::Timeout, false, None, None);
        assert_eq!((c.limit(), c.snapshot().decreases), (2.0, 2));
    }

    /// At its floor, an overload lowers nothing: not counted as a decrease.
    #[tokio::test(start_paused = true)]
    async fn an_overload_at_the_floor_is_no_decrease() {
        let c = leak(ConcurrencyLimit::new("t", spec(2, 2, 4, 0)));
        let mut p = c
            .acquire_by(Instant::now() + Duration::from_secs(10))
            .await
            .unwrap();
        p.on_failure(Class::Reset, false, None, None);
        assert_eq!((c.limit(), c.snapshot().decreases), (2.0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn one_decrease_per_round_trip() {
        let c = leak(ConcurrencyLimit::new("t", spec(8, 1, 8, 0)));
        let far = Instant::now() + Duration::from_secs(10);
        // Eight calls in flight when the dependency slows down: all slow, one decrease.
        let mut permits = Vec::new();
        for _ in 0..8 {
            permits.push(c.acquire_by(far).await.unwrap());
        }
        advance(Duration::from_millis(150)).await;
        for p in &mut permits {
            p.on_success();
        }
        assert_eq!(c.limit(), 4.0);
        assert_eq!(c.snapshot().decreases, 1);
        drop(permits);
        // An attempt started after that decrease lowers it again.
        let mut p = c.acquire_by(far).await.unwrap();
        advance(Duration::from_millis(150)).await;
        p.on_failure(Class::Timeout, false, None, None);
        assert_eq!(c.limit(), 2.0);
        // A permanent failure answered fast counts as fast; a refusal says nothing, nor does
        // a permanent failure without an answer (nothing reached the dependency).
        drop(p);
        let mut p = c.acquire_by(far).await.unwrap();
        let _q = c.acquire_by(far).await.unwrap();
        p.attempt_started(Instant::now());
        p.on_failure(Class::Rejected, false, None, None);
        assert_eq!(c.limit(), 2.0);
        p.on_failure(Class::Permanent, false, None, None);
        assert_eq!(c.limit(), 2.0);
        // Nor a 503 or a 429 a `Classify` of the user's took for permanent: no health.
        p.on_failure(Class::Permanent, false, Some(503), None);
        p.on_failure(Class::Permanent, false, Some(429), None);
        assert_eq!(c.limit(), 2.0);
        p.on_failure(Class::Permanent, false, Some(404), None);
        assert_eq!(c.limit(), 2.5);
    }

    /// A lower limit lets in only what it allows: with a wait (a semaphore, whose permits the
    /// limit takes back as they are given back, as a debt) and without (the slots counted).
    #[tokio::test(start_paused = true)]
    async fn a_lower_limit_lets_in_only_what_it_allows() {
        for max_wait_ms in [1, 0] {
            let c = leak(ConcurrencyLimit::new("t", spec(4, 1, 8, max_wait_ms)));
            let sem = c.sem.as_ref();
            assert_eq!(sem.is_some(), max_wait_ms > 0);
            let far = Instant::now() + Duration::from_secs(10);
            let mut held = Vec::new();
            for _ in 0..4 {
                held.push(c.acquire_by(far).await.unwrap());
            }
            assert_eq!(c.acquire_by(far).await.unwrap_err(), Refused::Full);
            held[0].on_failure(Class::Reset, false, None, None);
            assert_eq!(c.limit(), 2.0);
            if sem.is_some() {
                assert_eq!(c.debt.load(Ordering::Relaxed), 2);
            }
            // Two slots given back (paying the debt); only the third frees one.
            held.truncate(2);
            assert_eq!(c.in_flight(), 2);
            if let Some(sem) = sem {
                assert_eq!(sem.available_permits(), 0);
            }
            assert_eq!(c.acquire_by(far).await.unwrap_err(), Refused::Full);
            held.truncate(1);
            let again = c.acquire_by(far).await.unwrap();
            assert_eq!(c.in_flight(), 2);
            assert_eq!(c.acquire_by(far).await.unwrap_err(), Refused::Full);
            drop(again);
            let mut p = c.acquire_by(far).await.unwrap();
            p.attempt_started(Instant::now());
            for _ in 0..3 {
                p.on_success();
            }
            assert!((c.limit() - 3.24).abs() < 0.01, "{}", c.limit());
            // Growing pays no debt now: a permit is added.
            if let Some(sem) = sem {
                assert_eq!(sem.available_permits(), 1);
            }
            let q = c.acquire_by(far).await.unwrap();
            assert_eq!(c.in_flight(), 3);
            assert_eq!(c.acquire_by(far).await.unwrap_err(), Refused::Full);
            drop((held, p, q));
            assert_eq!(c.in_flight(), 0);
            let s = c.snapshot();
            assert_eq!(
                (s.admitted, s.rejected),
                (7, 4),
                "max_wait {max_wait_ms} ms"
            );
        }
    }

    /// Slots counted without a semaphore, taken and given back from four threads: never
    /// more than the limit at once, and all free again at the end.
    #[test]
    fn counted_slots_hold_under_contention() {
        let c = leak(ConcurrencyLimit::new("t", spec(3, 1, 8, 0)));
        let now = Instant::now();
        let held = AtomicU32::new(0);
        let most = AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..20_000 {
                        if let Some(p) = c.try_acquire_now(now) {
                            let n = held.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(n, Ordering::SeqCst);
                            held.fetch_sub(1, Ordering::SeqCst);
                            drop(p);
                        }
                    }
                });
            }
        });
        assert!(most.load(Ordering::SeqCst) <= 3, "{most:?} held at once");
        assert_eq!(c.in_flight(), 0);
        assert_eq!(c.limit(), 3.0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unused_limit_does_not_grow() {
        let c = leak(ConcurrencyLimit::new("t", spec(8, 1, 16, 0)));
        let far = Instant::now() + Duration::from_secs(10);
        for _ in 0..100 {
            c.acquire_by(far).await.unwrap().on_success();
        }
        assert_eq!(c.limit(), 8.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gets_the_slot_freed_or_the_limit_raised() {
        let c = leak(ConcurrencyLimit::new("t", spec(1, 1, 4, 100)));
        let far = Instant::now() + Duration::from_secs(10);
        let p = c.acquire_by(far).await.unwrap();
        let t = Instant::now();
        let (got, ()) = tokio::join!(c.acquire_by(far), async {
            advance(Duration::from_millis(40)).await;
            drop(p);
        });
        assert!(got.is_ok());
        assert_eq!(t.elapsed(), Duration::from_millis(40));
        // Nothing frees: refused at max_wait, or at the deadline when that comes first.
        let t = Instant::now();
        assert_eq!(c.acquire_by(far).await.unwrap_err(), Refused::Full);
        assert_eq!(t.elapsed(), Duration::from_millis(100));
        let soon = Instant::now() + Duration::from_millis(30);
        assert_eq!(c.acquire_by(soon).await.unwrap_err(), Refused::Deadline);
        // A fast answer that raises the whole limit lets a waiter in.
        let mut held = got.unwrap();
        held.attempt_started(Instant::now());
        let (got, ()) = tokio::join!(c.acquire_by(far), async {
            advance(Duration::from_millis(10)).await;
            held.on_success();
        });
        assert!(got.is_ok());
        assert_eq!(c.limit(), 2.0);
        assert_eq!(c.in_flight(), 2);
    }

    #[test]
    fn spec_ranges() {
        assert!(spec(16, 1, 256, 0).validate().is_ok());
        assert!(spec(0, 0, 4, 0).validate().is_err());
        assert!(spec(8, 4, 2, 0).validate().is_err());
        assert!(spec(4, 1, 2_000_000, 0).validate().is_err());
        let mut s = spec(4, 1, 8, 0);
        s.backoff = 1.0;
        assert!(s.validate().is_err());
        s.backoff = 0.9;
        s.latency = Duration::ZERO;
        assert!(s.validate().is_err());
        assert!(ConcurrencyLimit::try_new("t", s).is_err());
    }
}
