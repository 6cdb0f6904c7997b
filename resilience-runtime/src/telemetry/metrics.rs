//! The `metrics` facade: keys built once per annotated function (their labels leaked, like the
//! rest of the shared state), so that recording allocates nothing without a recorder.
//!
//! With the process's global recorder, the handles each key was registered as are kept per
//! thread and used again (`with!`): a recorder's look-up of a key (a Prometheus recorder's:
//! the key's labels compared, a copy of it made, six allocations a call) is paid once, not on
//! every call. A handle unused on its thread for [`REFRESH`] is asked for again before it is
//! used: a recorder may drop a metric idle for its idle timeout (Prometheus's
//! `idle_timeout`), and only a new registration brings it back, which a kept handle would
//! never make. A local recorder (`metrics::with_local_recorder`) is asked every time, as
//! before: it lives for a scope, and another may take its place at the same address.

use std::cell::RefCell;
#[cfg(feature = "server")]
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant as StdInstant};

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder};

use super::{AttemptEnd, CLASSES, Outcome, names};
use crate::breaker::{Breaker, BreakerState};
use crate::budget::Budget;
use crate::bulkhead::Bulkhead;
use crate::policy::Policy;

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// The keys of one annotated function.
#[derive(Debug)]
pub(crate) struct Instruments {
    /// The function's place in each thread's cache of handles.
    id: usize,
    calls: [Key; Outcome::ALL.len()],
    call_duration: [Key; Outcome::ALL.len()],
    attempts: [Key; CLASSES.len()],
    attempt_duration: [Key; CLASSES.len()],
    retries: [Key; CLASSES.len()],
    budget: Option<Key>,
    breaker: Option<Key>,
    bulkhead: Option<Key>,
    /// Hedges: [lost, won].
    hedges: Option<[Key; 2]>,
    /// Fallbacks: [withheld, called].
    fallbacks: [Key; 2],
}

fn leak(labels: Vec<Label>) -> &'static [Label] {
    Box::leak(labels.into_boxed_slice())
}

pub(crate) fn instruments(
    policy: &'static Policy,
    function: &'static str,
    policy_name: &'static str,
) -> &'static Instruments {
    let base = || {
        vec![
            Label::new("policy", policy_name),
            Label::new("function", function),
        ]
    };
    let with = |name: &'static str, extra: Vec<Label>| {
        let mut l = base();
        l.extend(extra);
        Key::from_static_labels(name, leak(l))
    };
    let by_outcome = |name: &'static str| {
        Outcome::ALL.map(|o| with(name, vec![Label::new("outcome", o.as_str())]))
    };
    let by_class = |name: &'static str, method: bool| {
        CLASSES.map(|c| {
            let mut extra = vec![Label::new("class", c)];
            if method {
                // As the attempt span writes it: `_OTHER` for a method the conventions do not
                // know (a policy whose method is neither declared nor inferred).
                let method = super::span::semconv_method(policy.method.as_str()).1;
                extra.push(Label::new("http.request.method", method));
            }
            with(name, extra)
        })
    };
    let named = |name: &'static str, label: &'static str, value: &'static str| {
        Key::from_static_labels(name, leak(vec![Label::new(label, value)]))
    };
    // Private state (an inline table without `name`) goes by the function's path, as the
    // registry keeps it and a breaker's transitions name it.
    let own = |n: &'static str| if n.is_empty() { function } else { n };
    let budget_name = policy.budget.map(|(n, _)| own(n));
    static NEXT_ID: AtomicUsize = AtomicUsize::new(0);
    Box::leak(Box::new(Instruments {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        calls: by_outcome(names::CALLS),
        call_duration: by_outcome(names::CALL_DURATION),
        attempts: by_class(names::ATTEMPTS, false),
        attempt_duration: by_class(names::ATTEMPT_DURATION, true),
        retries: by_class(names::RETRIES, false),
        budget: budget_name.map(|n| named(names::BUDGET_AVAILABLE, "budget", n)),
        breaker: policy
            .breaker
            .map(|(n, _)| named(names::BREAKER_STATE, "breaker", own(n))),
        bulkhead: policy
            .bulkhead
            .map(|(n, _)| named(names::BULKHEAD_IN_FLIGHT, "bulkhead", own(n))),
        hedges: policy
            .hedge
            .map(|_| ["lost", "won"].map(|o| with(names::HEDGES, vec![Label::new("outcome", o)]))),
        fallbacks: ["withheld", "called"]
            .map(|o| with(names::FALLBACKS, vec![Label::new("outcome", o)])),
    }))
}

/// A handle kept for use again is asked for again once it has not been used on its thread
/// for this long: below any idle timeout a recorder would sensibly be given (Prometheus
/// scrapes every few seconds at most), so that a metric the recorder dropped as idle is
/// registered again before its next update, which a dropped handle would lose.
const REFRESH: Duration = Duration::from_millis(100);

const OUTCOMES: usize = Outcome::ALL.len();
const NCLASSES: usize = CLASSES.len();

/// Where each key's handle is kept: counters, then histograms, then gauges.
mod slot {
    use super::{NCLASSES, OUTCOMES};
    pub(super) const CALLS: usize = 0;
    pub(super) const ATTEMPTS: usize = CALLS + OUTCOMES;
    pub(super) const RETRIES: usize = ATTEMPTS + NCLASSES;
    pub(super) const HEDGES: usize = RETRIES + NCLASSES;
    pub(super) const FALLBACKS: usize = HEDGES + 2;
    pub(super) const COUNTERS: usize = FALLBACKS + 2;
    pub(super) const CALL_DURATION: usize = 0;
    pub(super) const ATTEMPT_DURATION: usize = CALL_DURATION + OUTCOMES;
    pub(super) const HISTOGRAMS: usize = ATTEMPT_DURATION + NCLASSES;
    pub(super) const BUDGET: usize = 0;
    pub(super) const BREAKER: usize = 1;
    pub(super) const BULKHEAD: usize = 2;
    pub(super) const GAUGES: usize = 3;
}

/// A handle, and when it was last used on this thread.
struct Slot<H> {
    handle: Option<H>,
    used: Option<StdInstant>,
}

impl<H> Default for Slot<H> {
    fn default() -> Self {
        Slot {
            handle: None,
            used: None,
        }
    }
}

impl<H> Slot<H> {
    fn get(&mut self, now: StdInstant, register: impl FnOnce() -> H) -> &H {
        let fresh = self
            .used
            .is_some_and(|u| now.saturating_duration_since(u) < REFRESH);
        self.used = Some(now);
        if !fresh {
            self.handle = None;
        }
        self.handle.get_or_insert_with(register)
    }
}

/// One function's handles on one thread.
struct Handles {
    counters: [Slot<Counter>; slot::COUNTERS],
    histograms: [Slot<Histogram>; slot::HISTOGRAMS],
    gauges: [Slot<Gauge>; slot::GAUGES],
}

thread_local! {
    /// Each function's handles on this thread, by [`Instruments::id`], for the global recorder.
    static HANDLES: RefCell<Vec<Option<Box<Handles>>>> = const { RefCell::new(Vec::new()) };
}

/// Recording through the recorder's look-up of each key (a local recorder, or none).
struct Direct<'a>(&'a dyn Recorder);

impl Direct<'_> {
    #[inline(always)]
    fn increment(&mut self, _slot: usize, key: &Key) {
        self.0.register_counter(key, &METADATA).increment(1);
    }

    #[inline(always)]
    fn record(&mut self, _slot: usize, key: &Key, value: f64) {
        self.0.register_histogram(key, &METADATA).record(value);
    }

    #[inline(always)]
    fn gauge(&mut self, _slot: usize, key: &Key, f: impl FnOnce(&Gauge)) {
        f(&self.0.register_gauge(key, &METADATA));
    }
}

/// Recording through the handles this thread keeps for the global recorder; `now` says which
/// have been idle long enough to be asked for again.
struct Kept<'a> {
    recorder: &'a dyn Recorder,
    handles: &'a mut Handles,
    now: StdInstant,
}

impl Kept<'_> {
    #[inline(always)]
    fn increment(&mut self, slot: usize, key: &Key) {
        let r = self.recorder;
        self.handles.counters[slot]
            .get(self.now, || r.register_counter(key, &METADATA))
            .increment(1);
    }

    #[inline(always)]
    fn record(&mut self, slot: usize, key: &Key, value: f64) {
        let r = self.recorder;
        self.handles.histograms[slot]
            .get(self.now, || r.register_histogram(key, &METADATA))
            .record(value);
    }

    #[inline(always)]
    fn gauge(&mut self, slot: usize, key: &Key, f: impl FnOnce(&Gauge)) {
        let r = self.recorder;
        f(self.handles.gauges[slot].get(self.now, || r.register_gauge(key, &METADATA)));
    }
}

/// The global recorder's address and size, once a thread of our own has seen it (the only
/// recorder a new thread sees: no local one is set there). `metrics::set_global_recorder`
/// leaks it: no other recorder with state can ever be at that address.
static GLOBAL: OnceLock<(usize, usize)> = OnceLock::new();

fn identity(recorder: &dyn Recorder) -> (usize, usize) {
    (
        std::ptr::from_ref(recorder).cast::<()>() as usize,
        std::mem::size_of_val(recorder),
    )
}

/// Whether `recorder` is the global one. The first time a recorder with state is seen, and now
/// and then after while the global one is not known ([`look_for_global`]), a thread is started
/// to look (the facade does not say which recorder it lent): the calls until it has looked ask
/// the recorder for every handle, as a local recorder's do.
#[inline]
fn is_global(recorder: &dyn Recorder) -> bool {
    if let Some(g) = GLOBAL.get() {
        return *g == identity(recorder);
    }
    // No recorder (the facade's no-op one), or one without state: nothing to keep.
    if std::mem::size_of_val(recorder) == 0 {
        return false;
    }
    look_for_global(false);
    false
}

/// Starts a thread that records the global recorder in [`GLOBAL`] (and waits for it when
/// `wait`), unless the last look was too recent: a second after the first, then twice as long
/// after each look that found none, up to a minute (a service that records to local recorders
/// only, with no global one, starts a thread a minute, not one a second). True when it waited
/// for a look that found the global recorder now (and described the metrics to it).
#[cold]
pub(crate) fn look_for_global(wait: bool) -> bool {
    /// When the last look started, and how long to wait after it for the next.
    static LOOKED: Mutex<Option<(StdInstant, Duration)>> = Mutex::new(None);
    const FIRST_GAP: Duration = Duration::from_secs(1);
    const MAX_GAP: Duration = Duration::from_secs(64);
    if GLOBAL.get().is_some() {
        return false;
    }
    {
        // A call does not wait for another thread's look; `describe_metrics()` does.
        let mut looked = if wait {
            LOOKED
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        } else {
            match LOOKED.try_lock() {
                Ok(g) => g,
                Err(_) => return false,
            }
        };
        if GLOBAL.get().is_some() {
            return false;
        }
        let now = StdInstant::now();
        let gap = match *looked {
            Some((t, gap)) if !wait && now.saturating_duration_since(t) < gap => return false,
            Some((_, gap)) => (gap * 2).min(MAX_GAP),
            None => FIRST_GAP,
        };
        *looked = Some((now, gap));
    }
    #[cfg(test)]
    tests::LOOKS.fetch_add(1, Ordering::Relaxed);
    let look = || {
        let found = metrics::with_recorder(|r| {
            std::mem::size_of_val(r) > 0 && GLOBAL.set(identity(r)).is_ok()
        });
        // Found now, by this look: described once, in case the service does not.
        if found {
            describe_all();
        }
        found
    };
    // A thread could not be started (a limit on threads): nothing is kept, nothing is lost.
    match std::thread::Builder::new()
        .name("resilience-metrics".into())
        .spawn(look)
    {
        Ok(t) if wait => t.join().unwrap_or(false),
        _ => false,
    }
}

/// Runs `$body` with `$r` recording to the current recorder: through `$inst`'s handles kept on
/// this thread when it is the global one, else through its look-ups. `$now`: the caller's
/// clock reading, if it took one (the process's clock, but for a test's paused clock: a handle
/// then counts as idle by that clock). The body is written once and compiled for each.
macro_rules! with {
    ($inst:expr, $now:expr, |$r:ident| $body:expr) => {
        metrics::with_recorder(|recorder| {
            if is_global(recorder) {
                with_kept($inst, $now, recorder, |$r: &mut Kept<'_>| $body)
            } else {
                let $r = &mut Direct(recorder);
                $body
            }
        })
    };
}

/// Runs `f` with `inst`'s handles on this thread (made the first time).
#[inline(never)]
fn with_kept(
    inst: &Instruments,
    now: Option<tokio::time::Instant>,
    recorder: &dyn Recorder,
    f: impl FnOnce(&mut Kept<'_>),
) {
    // Taken out of the thread's cache while in use: a recorder that records through this
    // function again (it should not) finds no handles, and asks for them.
    let kept = HANDLES
        .try_with(|c| {
            c.try_borrow_mut()
                .ok()
                .and_then(|mut v| v.get_mut(inst.id).and_then(Option::take))
        })
        .ok()
        .flatten();
    let mut handles = kept.unwrap_or_else(|| {
        Box::new(Handles {
            counters: std::array::from_fn(|_| Slot::default()),
            histograms: std::array::from_fn(|_| Slot::default()),
            gauges: std::array::from_fn(|_| Slot::default()),
        })
    });
    f(&mut Kept {
        recorder,
        handles: &mut handles,
        now: now.map_or_else(StdInstant::now, tokio::time::Instant::into_std),
    });
    let _ = HANDLES.try_with(|c| {
        if let Ok(mut v) = c.try_borrow_mut() {
            if v.len() <= inst.id {
                v.resize_with(inst.id + 1, || None);
            }
            v[inst.id] = Some(handles);
        }
    });
}

#[cfg(feature = "server")]
thread_local! {
    /// Handles of keys made once and leaked (the server half's), by the key's address, for
    /// the global recorder.
    static STATIC_COUNTERS: RefCell<HashMap<usize, Slot<Counter>>> = RefCell::new(HashMap::new());
    static STATIC_GAUGES: RefCell<HashMap<usize, Slot<Gauge>>> = RefCell::new(HashMap::new());
}

#[cfg(feature = "server")]
/// Runs `f` with the handle of the leaked `key` in `kept`, when the current recorder is the
/// global one (the handle kept on this thread as the functions' are), else with `register`'s
/// handle from the recorder's look-up.
fn with_static<H>(
    kept: &'static std::thread::LocalKey<RefCell<HashMap<usize, Slot<H>>>>,
    key: &'static Key,
    register: impl Fn(&dyn Recorder, &Key) -> H,
    f: impl FnOnce(&H),
) {
    metrics::with_recorder(|recorder| {
        if is_global(recorder) {
            let now = StdInstant::now();
            let at = std::ptr::from_ref(key) as usize;
            let mut f = Some(f);
            let _ = kept.try_with(|c| {
                if let Ok(mut m) = c.try_borrow_mut() {
                    let h = m
                        .entry(at)
                        .or_default()
                        .get(now, || register(recorder, key));
                    if let Some(f) = f.take() {
                        f(h);
                    }
                }
            });
            // The thread's table in use (a recorder recording through it) or gone (the
            // thread ending): through the look-up.
            if let Some(f) = f {
                f(&register(recorder, key));
            }
        } else {
            f(&register(recorder, key));
        }
    });
}

#[cfg(feature = "server")]
/// Adds one to the counter of `key`, a key made once and leaked.
pub(crate) fn increment_static(key: &'static Key) {
    with_static(
        &STATIC_COUNTERS,
        key,
        |r, k| r.register_counter(k, &METADATA),
        |c| c.increment(1),
    );
}

#[cfg(feature = "server")]
/// Sets the gauge of `key`, a key made once and leaked.
pub(crate) fn set_static(key: &'static Key, value: f64) {
    with_static(
        &STATIC_GAUGES,
        key,
        |r, k| r.register_gauge(k, &METADATA),
        |g| g.set(value),
    );
}

pub(crate) fn on_attempt_end(
    inst: &Instruments,
    end: &AttemptEnd,
    took: Duration,
    now: tokio::time::Instant,
) {
    let class = super::class_index(end.class);
    with!(inst, Some(now), |r| {
        r.increment(slot::ATTEMPTS + class, &inst.attempts[class]);
        r.record(
            slot::ATTEMPT_DURATION + class,
            &inst.attempt_duration[class],
            took.as_secs_f64(),
        );
    });
}

/// A retry of a failure of `class` began.
pub(crate) fn retry_made(inst: &Instruments, class: crate::class::Class) {
    let class = super::class_index(Some(class));
    with!(inst, None, |r| r
        .increment(slot::RETRIES + class, &inst.retries[class]));
}

/// A call that failed for good met its fallback: `called`, or withheld (an attempt may have
/// carried out a request that needs a key).
pub(crate) fn fallback(inst: &Instruments, called: bool) {
    let i = usize::from(called);
    with!(inst, None, |r| r
        .increment(slot::FALLBACKS + i, &inst.fallbacks[i]));
}

pub(crate) fn hedge_ended(inst: &Instruments, won: bool) {
    if let Some(keys) = &inst.hedges {
        let i = usize::from(won);
        with!(inst, None, |r| r.increment(slot::HEDGES + i, &keys[i]));
    }
}

pub(crate) fn on_call_end(
    inst: &Instruments,
    outcome: Outcome,
    took: Option<Duration>,
    end: Option<tokio::time::Instant>,
    budget: Option<&Budget>,
    breaker: Option<&Breaker>,
) {
    let i = outcome as usize;
    with!(inst, end, |r| {
        r.increment(slot::CALLS + i, &inst.calls[i]);
        if let Some(took) = took {
            r.record(
                slot::CALL_DURATION + i,
                &inst.call_duration[i],
                took.as_secs_f64(),
            );
        }
        if let (Some(k), Some(b), Some(now)) = (&inst.budget, budget, end) {
            r.gauge(slot::BUDGET, k, |g| {
                g.set(b.available_for_gauge(now) as f64)
            });
        }
        if let (Some(k), Some(b)) = (&inst.breaker, breaker) {
            // Settled, as a transition on another thread sets it too: a state read before
            // that transition must not be the last one set.
            r.gauge(slot::BREAKER, k, |g| {
                set_settled(g, || breaker_state_value(b.state()) as u32)
            });
        }
    });
}

/// A call took or gave back a bulkhead slot: the gauge is set from the bulkhead, once the
/// slot is taken or given back.
pub(crate) fn bulkhead_gauge(inst: &Instruments, bulkhead: &Bulkhead) {
    if let Some(k) = &inst.bulkhead {
        with!(inst, None, |r| {
            r.gauge(slot::BULKHEAD, k, |g| {
                set_settled(g, || bulkhead.in_flight())
            })
        });
    }
}

/// Sets `gauge` to `read()`, then reads again and sets again while it changed: two calls that
/// end at once on two threads could otherwise leave the older count last (each read, then
/// set, in either order). Every change is followed by its own settling, so the last value
/// set is the last count (bounded: under constant change the next change settles it).
pub(crate) fn set_settled(gauge: &metrics::Gauge, read: impl Fn() -> u32) {
    let mut n = read();
    for _ in 0..8 {
        gauge.set(f64::from(n));
        let again = read();
        if again == n {
            return;
        }
        n = again;
    }
}

/// 0 closed, 1 half-open, 2 open: higher is worse.
pub(crate) fn breaker_state_value(s: BreakerState) -> f64 {
    match s {
        BreakerState::Closed => 0.0,
        BreakerState::HalfOpen => 1.0,
        BreakerState::Open => 2.0,
    }
}

/// A breaker changed state (rare: these keys are built on the spot).
pub(crate) fn breaker_transition(name: &'static str, from: BreakerState, to: BreakerState) {
    metrics::counter!(names::BREAKER_TRANSITIONS, "breaker" => name, "from" => from.as_str(), "to" => to.as_str())
        .increment(1);
    metrics::gauge!(names::BREAKER_STATE, "breaker" => name).set(breaker_state_value(to));
}

/// Describes every metric (unit and help text) to the installed recorder.
///
/// Called after the recorder is installed, it also finds it, so that the first calls keep
/// their handles from the start (they otherwise do from within a few calls). A global
/// recorder is described once anyway when the runtime first finds it (the first call that
/// records to it), so that an exporter naming by unit (Prometheus's `_seconds`) names the
/// durations right without this call; a local recorder (`metrics::with_local_recorder`) is
/// described only by this call, made where it is set.
pub fn describe_metrics() {
    let described = look_for_global(true);
    // That look described the global recorder if it found it now: not again when it is also
    // the current one (a local recorder set where this is called is described here).
    if !(described && metrics::with_recorder(|r| GLOBAL.get() == Some(&identity(r)))) {
        describe_all();
    }
}

/// Every metric's unit and help text, to the current recorder.
fn describe_all() {
    use metrics::Unit;
    for (name, kind, unit, help) in super::METRICS {
        let unit = match unit {
            "s" => Some(Unit::Seconds),
            "{call}" | "{attempt}" | "{retry}" | "{transition}" | "{request}" | "{response}"
            | "{decision}" => Some(Unit::Count),
            _ => None,
        };
        match kind {
            "counter" => metrics::describe_counter!(name, unit.unwrap_or(Unit::Count), help),
            "histogram" => {
                metrics::describe_histogram!(name, unit.unwrap_or(Unit::Seconds), help)
            }
            _ => match unit {
                Some(u) => metrics::describe_gauge!(name, u, help),
                None => metrics::describe_gauge!(name, help),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

    use super::{look_for_global, set_settled};

    /// Looks for the global recorder started, in this test binary.
    pub(super) static LOOKS: AtomicU32 = AtomicU32::new(0);

    /// Calls that see a recorder with state and do not know the global one (a local recorder,
    /// here none at all) start a look at most once in the gap since the last one, not each;
    /// `describe_metrics()`'s look does not wait for the gap.
    #[test]
    fn the_global_recorder_is_looked_for_once_in_a_while_not_on_every_call() {
        look_for_global(true);
        let after_first = LOOKS.load(Ordering::Relaxed);
        for _ in 0..1000 {
            look_for_global(false);
        }
        assert_eq!(
            LOOKS.load(Ordering::Relaxed),
            after_first,
            "a look on every call"
        );
        look_for_global(true);
        assert_eq!(LOOKS.load(Ordering::Relaxed), after_first + 1);
    }

    /// Another call gave its slot back between the read and the set (2 read, 1 by the time it
    /// was set): the gauge ends at 1, not at the count read first.
    #[test]
    fn a_count_that_moved_while_it_was_set_is_set_again() {
        let cell = Arc::new(AtomicU64::new(0));
        let gauge = metrics::Gauge::from_arc(cell.clone());
        let reads = Cell::new(0u32);
        set_settled(&gauge, || {
            reads.set(reads.get() + 1);
            if reads.get() == 1 { 2 } else { 1 }
        });
        assert_eq!(f64::from_bits(cell.load(Ordering::Relaxed)), 1.0);
        assert_eq!(
            reads.get(),
            3,
            "read, set, read (moved), set, read (settled)"
        );
    }
}
