//! The `metrics` facade: keys built once per annotated function (their labels leaked, like the
//! rest of the shared state), so that recording allocates nothing, with or without a recorder.

use std::time::Duration;

use metrics::{Key, Label, Level, Metadata, Recorder};

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
    Box::leak(Box::new(Instruments {
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
    }))
}

fn with<T>(f: impl FnOnce(&dyn Recorder) -> T) -> T {
    metrics::with_recorder(f)
}

pub(crate) fn on_attempt_end(inst: &Instruments, end: &AttemptEnd, took: Duration) {
    let class = super::class_index(end.class);
    with(|r| {
        r.register_counter(&inst.attempts[class], &METADATA)
            .increment(1);
        r.register_histogram(&inst.attempt_duration[class], &METADATA)
            .record(took.as_secs_f64());
        if end.decision == "retry" {
            r.register_counter(&inst.retries[class], &METADATA)
                .increment(1);
        }
    });
}

pub(crate) fn hedge_ended(inst: &Instruments, won: bool) {
    if let Some(keys) = &inst.hedges {
        with(|r| {
            r.register_counter(&keys[usize::from(won)], &METADATA)
                .increment(1)
        });
    }
}

pub(crate) fn on_call_end(
    inst: &Instruments,
    outcome: Outcome,
    took: Option<Duration>,
    budget: Option<(&Budget, tokio::time::Instant)>,
    breaker: Option<&Breaker>,
) {
    let i = outcome as usize;
    with(|r| {
        r.register_counter(&inst.calls[i], &METADATA).increment(1);
        if let Some(took) = took {
            r.register_histogram(&inst.call_duration[i], &METADATA)
                .record(took.as_secs_f64());
        }
        if let (Some(k), Some((b, now))) = (&inst.budget, budget) {
            r.register_gauge(k, &METADATA)
                .set(b.available_for_gauge(now) as f64);
        }
        if let (Some(k), Some(b)) = (&inst.breaker, breaker) {
            r.register_gauge(k, &METADATA)
                .set(breaker_state_value(b.state()));
        }
    });
}

/// A call took or gave back a bulkhead slot: the gauge is set from the bulkhead, once the
/// slot is taken or given back.
pub(crate) fn bulkhead_gauge(inst: &Instruments, bulkhead: &Bulkhead) {
    if let Some(k) = &inst.bulkhead {
        with(|r| set_settled(&r.register_gauge(k, &METADATA), || bulkhead.in_flight()));
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
pub fn describe_metrics() {
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
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::set_settled;

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
