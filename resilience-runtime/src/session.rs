//! One logical call: deadline → bulkhead → retry loop (with budget) → breaker → attempt timeout.
//!
//! The code `#[resilient]` generates drives a [`Session`]:
//!
//! ```ignore
//! // One static per function: its policy packed into a string, unpacked on the first call.
//! static STATE: PolicyState = PolicyState::compiled(PATH, "rp2,…", locate);
//! if let Some(e) = Session::refused_compiled(&STATE) { return Err(e.into()) } // breaker open
//! let mut session = Session::begin_compiled(&STATE, key);
//! if let Some(e) = session.take_refusal() { return Err(e.into()) }
//! if !session.admitted() { session.admit().await?; } // bulkhead, concurrency or rate limit
//! loop {
//!     let mut r = session.attempt(pin!(Some(async { /* the function's body */ }))).await;
//!     if let Err(e) = &mut r {
//!         let class = probe(e, session.attempts());
//!         match session.after_failure(class) { // the next attempt waits out the backoff
//!             Next::Retry => continue,
//!             Next::Return => {}
//!             Next::Replace(err) => r = Err(From::from(err)),
//!         }
//!     }
//!     break r;
//! }
//! ```

#![allow(missing_docs)] // Not public API: what generated code names, hidden in `__private`.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::__private::HoldsRuntimeErrors;
use crate::backoff::BackoffState;
use crate::breaker::{BreakerPermit, Refusal};
use crate::bulkhead::BulkheadPermit;
use crate::classify::Class;
use crate::context::{AttemptCtx, Held, Key, Outer, Status, with_attempt};
use crate::counters::Refusals;
use crate::decision::{Decision, Facts, GiveUp, decide};
use crate::error::{Error, ErrorKind};
use crate::metrics::PolicyMetrics;
use crate::policy::{KeySource, Method, Policy};
use crate::registry::{PolicyState, Resolved};
use crate::report::CallReport;
use crate::telemetry::{self, AttemptScope};

/// The idempotency key the generated code hands to [`Session::start`].
#[derive(Debug)]
pub enum KeyArg {
    None,
    Auto,
    Given(Result<reqwest::header::HeaderValue, Error>),
}

/// Builds a key from the value of `param` (as the attribute names it: `order_id`,
/// `req.order_id`).
pub fn key_from<T: std::fmt::Display + ?Sized>(value: &T, param: &'static str) -> KeyArg {
    let s = value.to_string();
    let invalid = |why| KeyArg::Given(Err(Error::call(InvalidKey::new(param, &s, why))));
    if s.is_empty() {
        return invalid(Why::Length(0));
    }
    // Its length counted as servers read it (this crate's layer among them): a quoted
    // string's characters, without its quotes and escapes.
    let Some(len) = key_in_form(s.as_bytes()) else {
        return invalid(Why::NotInForm);
    };
    if len > 255 {
        return invalid(Why::Length(len));
    }
    match reqwest::header::HeaderValue::from_str(&s) {
        Ok(h) => KeyArg::Given(Ok(h)),
        Err(_) => invalid(Why::NotInForm),
    }
}

/// Whether a key is written as servers read it (this crate's `IdempotencyLayer` among them):
/// visible ASCII, or a quoted Structured Field string (the IETF draft's form), not empty. A key
/// with a space or a byte past ASCII was sent, and answered 400: refused before anything is
/// sent instead. Its length as they read it when it is: a quoted string's characters (an
/// escape one), a bare key's bytes.
fn key_in_form(b: &[u8]) -> Option<usize> {
    match b {
        [b'"', inner @ .., b'"'] if !inner.is_empty() => {
            let (mut escaped, mut len) = (false, 0);
            for &c in inner {
                if escaped {
                    escaped = false;
                    if c != b'"' && c != b'\\' {
                        return None;
                    }
                    len += 1;
                } else if c == b'\\' {
                    escaped = true;
                } else if (0x20..=0x7e).contains(&c) && c != b'"' {
                    len += 1;
                } else {
                    return None;
                }
            }
            (!escaped).then_some(len)
        }
        [b'"', ..] => None,
        _ => b
            .iter()
            .all(|c| (0x21..=0x7e).contains(c))
            .then_some(b.len()),
    }
}

/// An idempotency key that is empty, longer than 255 bytes, or not in the form servers read:
/// the parameter it was taken from, and the start of its value (escaped, as `Debug` writes a
/// string), so that the caller can find it.
#[derive(Debug)]
struct InvalidKey {
    param: &'static str,
    value: String,
    why: Why,
}

#[derive(Debug)]
enum Why {
    Length(usize),
    NotInForm,
}

impl InvalidKey {
    /// At most this many characters of the value are shown.
    const SHOWN: usize = 40;

    fn new(param: &'static str, value: &str, why: Why) -> InvalidKey {
        let mut shown: String = value.chars().take(Self::SHOWN).collect();
        if shown.len() < value.len() {
            shown.push('…');
        }
        InvalidKey {
            param,
            value: format!("{shown:?}"),
            why,
        }
    }
}

impl std::fmt::Display for InvalidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let InvalidKey { param, value, .. } = self;
        write!(f, "idempotency key from `{param}` ({value}) ")?;
        match self.why {
            Why::Length(n) => {
                write!(f, "of {n} bytes (characters, quoted): it must be 1 to 255")
            }
            Why::NotInForm => f.write_str(
                "may hold only visible ASCII characters (no spaces, control characters or bytes past ASCII), unless it is a quoted Structured Field string (\"order 7\")",
            ),
        }
    }
}

impl std::error::Error for InvalidKey {}

/// Records in an enclosing attempt that a nested call sent (or may send) `method`. Running the
/// outer body again starts the nested call afresh, with a new automatic key: to the server that
/// is a different request, so a method that needs a key counts as unkeyed there.
///
/// `same_key`: the nested call was given the enclosing call's own key (`place(order_id)` keyed
/// by `order_id` calling `charge` keyed by it too, [`under_the_same_key`]): what it carries
/// out is the enclosing call's own.
fn note_sent(outer: &AttemptCtx, method: Method, fresh_key: bool, same_key: bool) {
    outer.note_method(method);
    // Whether the nested call's request gets through is not known here: as if it did, and
    // as if it was carried out (no fallback of the enclosing call answers after it).
    if same_key {
        outer.note_own_carried(method);
    } else {
        outer.note_carried(method);
    }
    outer.stamped.set(true);
    if !method.is_safe() && fresh_key {
        outer.all_keyed.set(false);
    }
}

/// A nested call admitted tells the enclosing attempt what it may send (see `note_sent`).
#[inline(never)]
fn tell_admitted(policy: &Policy, key: &Option<Key>) {
    let fresh_key = !matches!(key, Some(Key::Given(_)));
    let _ = with_attempt(|o| {
        note_sent(o, policy.method, fresh_key, under_the_same_key(o, key));
    });
}

/// Whether a nested call's `key` is the enclosing attempt's own (a key given to it, the same
/// value: an automatic key of its own never is).
fn under_the_same_key(outer: &AttemptCtx, key: &Option<Key>) -> bool {
    match (&outer.key, key) {
        (Some(a), Some(Key::Given(b))) => a.is_text(b.as_bytes()),
        _ => false,
    }
}

/// A nested call begins (`true`) or ends (`false`) its wait for a slot or a permit: counted
/// among the enclosing attempt's helpers running meanwhile.
#[inline(never)]
fn tell_waiting(begins: bool) {
    let _ = with_attempt(|o| {
        let n = o.helpers_running.get();
        o.helpers_running
            .set(if begins { n + 1 } else { n.saturating_sub(1) });
    });
}

/// The error of a call refused a slot (a bulkhead's or a concurrency limit's): the limit was
/// reached (`full`), or the deadline came first. Counted as a bulkhead rejection.
pub(crate) fn slot_refused(shared: &Resolved, full: bool, started: Instant) -> Error {
    PolicyMetrics::incr(&shared.metrics.rejected_bulkhead);
    telemetry::call_rejected_by_bulkhead(shared, started); // telemetry (issue 12)
    report_refused(shared.function, started.elapsed());
    let kind = if full {
        ErrorKind::BulkheadFull
    } else {
        ErrorKind::DeadlineExceeded
    };
    Error::new(kind)
        .with_class(Some(Class::Rejected), None)
        .with_elapsed(started.elapsed())
}

/// A call is admitted: counted, deposited in the budget (unless it was handed no time at all,
/// `deadline <= started`: it sends nothing, and earns no retry for others); its span.
fn open(
    shared: &'static Resolved,
    policy: &'static Policy,
    started: Instant,
    deadline: Instant,
    request_id: &Cell<u128>,
    request_id_text: Option<&reqwest::header::HeaderValue>,
    depth: u8,
) -> tracing::Span {
    telemetry::bulkhead_moved(shared); // telemetry (issue 12)
    if let Some(b) = shared.budget
        && deadline > started
    {
        b.deposit_batched(started);
    }
    call_span(shared, policy, request_id, request_id_text, depth)
}

/// The call's span (joined to the inbound trace at the top), without what opening the call
/// counts: for [`open`], and for a call given up on before it opened.
#[inline(always)]
fn call_span(
    shared: &'static Resolved,
    policy: &'static Policy,
    request_id: &Cell<u128>,
    request_id_text: Option<&reqwest::header::HeaderValue>,
    depth: u8,
) -> tracing::Span {
    let span = tracing::info_span!(
        "resilient",
        // Exported to OpenTelemetry under the function's path: a trace view lists the calls by
        // what they call, not each as "resilient".
        otel.name = shared.function,
        function = shared.function,
        policy = shared.policy,
        method = policy.method.as_str(),
        // Evaluated only when the span is enabled: the request id is drawn then, not before.
        request_id = tracing::field::display(match request_id_text {
            Some(v) => crate::context::RequestId::Text(v),
            None => crate::context::RequestId::Drawn(crate::context::draw_id(request_id)),
        }),
        // A number to OpenTelemetry: a `u8` would be exported as a string (see `span.rs`).
        depth = i64::from(depth),
        resilience.outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    #[cfg(feature = "opentelemetry")]
    if depth == 0 && !span.is_disabled() {
        let inbound = crate::context::inbound();
        if let Some(trace) = inbound.trace {
            telemetry::otel::join_inbound(&span, trace, inbound.tracestate.as_deref());
        }
    }
    span
}

/// The addresses of a call's breaker, bulkhead and concurrency limit (0: none), as [`Held`]
/// keeps them.
#[inline(always)]
fn own_states(shared: &Resolved) -> [usize; 3] {
    [
        shared.breaker.map_or(0, |b| std::ptr::from_ref(b) as usize),
        shared
            .bulkhead
            .map_or(0, |b| std::ptr::from_ref(b) as usize),
        shared
            .concurrency
            .map_or(0, |c| std::ptr::from_ref(c) as usize),
    ]
}

/// The bookkeeping of a call refused before it started by what it was handed (an invalid
/// idempotency key) or a policy that did not unpack: counted as failed without a retry, with
/// no attempt, and logged, though no span opens for it.
#[cold]
#[inline(never)]
fn refused_at_start(shared: &'static Resolved, e: &Error) {
    PolicyMetrics::incr(&shared.metrics.failed_without_retry);
    telemetry::on_call_end(shared, telemetry::Outcome::FailedWithoutRetry, None, None);
    tracing::warn!(
        function = shared.function,
        policy = shared.policy,
        error = %e,
        "call refused before it started"
    );
    report_unstarted(shared);
}

/// A call its breaker refuses before it starts (`refusal` is not `No`): counted and logged,
/// and its error; `None` when an enclosing call holds the half-open breaker's probe. Out of
/// line: the call that goes ahead carries none of it.
#[cold]
#[inline(never)]
fn refused_by_breaker_at_start(
    shared: &'static Resolved,
    breaker: &'static crate::breaker::Breaker,
    refusal: Refusal,
) -> Option<Error> {
    if refusal == Refusal::UnlessHeld && held_by_enclosing_call(breaker) {
        return None;
    }
    breaker.count_rejected();
    let m = shared.metrics;
    // One `rejected_breaker` and one `failed_without_retry` in the snapshot.
    PolicyMetrics::incr(&m.refused_by_breaker);
    telemetry::call_rejected_by_breaker(shared); // telemetry (issue 12)
    if crate::counters::warn_enabled!()
        && let Some(suppressed) = m.refusal_logged(Refusals::Breaker)
    {
        tracing::warn!(
            function = shared.function,
            policy = shared.policy,
            attempt = 1,
            breaker = breaker.name(),
            suppressed,
            "circuit open: call rejected"
        );
    }
    report_unstarted(shared);
    let mut refused = Error::new(ErrorKind::CircuitOpen)
        .with_attempts(0)
        .with_class(Some(Class::Rejected), None);
    // Inside an attempt (a helper the body handed the client to), the call was seen: it sent
    // nothing behind the runtime's back. And its refusal goes back into that attempt, which
    // writes what it sent into the error where it cannot reach it (`error::enclosing`).
    if with_attempt(|o| {
        o.saw();
        o.nested_ended(Some((Class::Rejected, None)));
    })
    .is_some()
    {
        refused.leaving();
    }
    Some(refused)
}

/// Whether an enclosing call's attempt holds `breaker`'s half-open probe: a call nested in it
/// runs under that permit, not refused for want of one (an enclosing attempt admitted while
/// the breaker was closed holds no probe: its nested call takes one, or is refused, as any
/// call). Out of line: asked only of a breaker that refuses.
#[cold]
#[inline(never)]
fn held_by_enclosing_call(breaker: &'static crate::breaker::Breaker) -> bool {
    with_attempt(|o| o.held.holds_probe(std::ptr::from_ref(breaker) as usize)).unwrap_or(false)
}

/// Whether a nested call runs under its enclosing call's permit of `breaker`, which holds it:
/// while the breaker is closed, or when that permit is its half-open probe. Otherwise (the
/// enclosing attempt was admitted while closed, and the breaker has opened since and is
/// half-open) the nested call takes a probe of its own or is refused: its requests would
/// reach a dependency under trial uncounted, past `half_open_calls`.
#[cold]
#[inline(never)]
fn runs_under_enclosing_permit(breaker: &crate::breaker::Breaker, held: &Held) -> bool {
    breaker.is_closed() || held.holds_probe(std::ptr::from_ref(breaker) as usize)
}

/// The report of a call refused before it started: no attempt ran (as `Error::attempts`
/// says, and as a refusal inside the loop reports), nothing waited.
fn report_unstarted(shared: &'static Resolved) {
    report_refused(shared.function, Duration::ZERO);
}

/// A call refused before any attempt, after `waited` (for a bulkhead slot, a rate-limit
/// permit), for [`measure`](crate::measure): it is the one that finished last.
pub(crate) fn report_refused(function: &'static str, waited: Duration) {
    crate::report::record(|| refused_report(function, waited));
}

#[cold]
#[inline(never)]
fn refused_report(function: &'static str, waited: Duration) -> (CallReport, u8) {
    let report = CallReport {
        function,
        attempts: 0,
        waited,
        elapsed: waited,
        succeeded: false,
    };
    (report, with_attempt(|o| o.depth + 1).unwrap_or(0))
}

/// What the generated loop does after a failed attempt.
#[derive(Debug)]
pub enum Next {
    /// Run the body again: the next attempt waits out the backoff delay first.
    Retry,
    /// Return the failed attempt's own error.
    Return,
    /// Return this runtime error instead (converted with `From`).
    Replace(Error),
}

/// What the last attempt left behind.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Last {
    /// Set when the runtime itself ended the attempt (timeout, deadline, breaker).
    pub(crate) runtime: Option<ErrorKind>,
    pub(crate) status: Status,
    /// How the last request failed before a response, if it did (see [`AttemptCtx::failure`]).
    pub(crate) failure: Option<Class>,
    pub(crate) retry_after: Option<Duration>,
    /// The last attempt's own last response carried a `Retry-After` (`retry_after` may be a
    /// sibling's, joined over a hedged round): a 409 is "still in progress" only with its own.
    retry_after_own: bool,
    /// The `Retry-After` of an earlier response the body went on past (see
    /// [`AttemptCtx::retry_after_handled`]): only for a failure that is that response's status.
    retry_after_handled: Option<Duration>,
    /// The attempt's failure is a nested call's (`Session::failure_nested`).
    nested_failure: bool,
    /// The last response was a replay of a stored answer (`Idempotent-Replayed: true`).
    replayed: bool,
    /// The last response was a 409 to a read (see `AttemptCtx::conflict_on_read`).
    conflict_on_read: bool,
    stamped: bool,
    pub(crate) all_keyed: bool,
    method: Option<Method>,
    /// The least safe method among the requests that reached the server, or may have.
    pub(crate) reached: Option<Method>,
    /// A request that needs a key may have been carried out (see `AttemptCtx::unsafe_carried`).
    unsafe_carried: bool,
    /// Of those, one of this call's own (see `AttemptCtx::unsafe_carried`, its own bit).
    own_carried: bool,
    /// A nested call in this attempt failed after it could retry on its own.
    nested_gave_up: bool,
    /// The tokens of those calls (see [`AttemptCtx::gave_up`]).
    pub(crate) gave_up: [u16; 4],
    /// The records of the errors nested calls returned into it (see
    /// [`AttemptCtx::returned`]).
    pub(crate) returned: [u32; 4],
    /// A helper handed the client sent nothing the runtime saw (see
    /// [`AttemptCtx::unseen_helper`]).
    unseen_helper: bool,
    /// A send of another type ran (see [`AttemptCtx::unproven`]).
    unproven: u8,
    /// The attempt began (counted, the breaker's permit taken); not when it was refused
    /// before it could (an open breaker, no time left).
    pub(crate) began: bool,
    /// The attempt's limit was less than a tenth of the policy's `timeout`: the deadline (its
    /// own, a caller's `X-Timeout-Ms`, an outer call's attempt) had cut it short.
    pub(crate) cut_short: bool,
    /// A hedged round ended on this attempt after another of its attempts was answered "still
    /// in progress": that answer's `Retry-After`.
    pub(crate) round_in_progress: Option<Duration>,
    /// When the body returned its error, as the attempt read the clock to tell a timeout
    /// (the decision after it reads that, not the clock again).
    pub(crate) failed_at: Option<Instant>,
    /// A hedged round ended on an earlier attempt's answer, given then: the backoff and the
    /// answer's `Retry-After` count from it (what has passed since is taken off them), not
    /// from the round's end after a sibling ran on. A breaker watching slowness and an
    /// adaptive limit judge the answer's latency to it (a 404 in 30 ms is no slow call because
    /// a sibling then hung to its timeout).
    pub(crate) answered_at: Option<Instant>,
    /// The round's `Retry-After` as of that answer (see `Answered`).
    answered_retry_after: Option<Duration>,
}

impl Last {
    /// The `Retry-After` that governs a failure of `class`: that of an earlier response the
    /// body went on past ([`AttemptCtx::retry_after_handled`]) only for a failure that is that
    /// response's own status (the status recorded last: a nested call's failure does not
    /// write it), not for a later failure (a nested call's timeout, or its 503 without one);
    /// none for a refusal.
    pub(crate) fn retry_after_for(&self, class: Option<Class>) -> Option<Duration> {
        match class {
            // A refusal (a breaker's, a nested call's) was answered by no server.
            Some(Class::Rejected) => None,
            _ => match self.handled_for(class) {
                Some(handled) => Some(self.retry_after.map_or(handled, |r| r.max(handled))),
                None => self.retry_after,
            },
        }
    }

    /// The `Retry-After` of an earlier response the body went on past, when the failure of
    /// `class` is that response's own status returned later (not a nested call's failure:
    /// `nested_failure`, read by the probe).
    fn handled_for(&self, class: Option<Class>) -> Option<Duration> {
        match class {
            Some(Class::Status(s)) if !self.nested_failure && self.status.get() == Some(s) => {
                self.retry_after_handled
            }
            _ => None,
        }
    }

    /// A request of the attempt that needs the call's key reached a server, or may have, and
    /// every such request carried the key: the request may have been carried out under it.
    pub(crate) fn keyed_request_reached(&self) -> bool {
        self.all_keyed && self.reached.is_some_and(|m| m.needs_key())
    }

    /// A request of the attempt's own that needs a key may have been carried out (see
    /// [`AttemptCtx::unsafe_carried`]): in a keyed call, what the error of a nested call it
    /// returns says of the call's key (not what the nested calls carried out).
    pub(crate) fn own_carried(&self) -> bool {
        self.own_carried
    }

    /// The attempt, failed so (`class`), may have carried out its own request under the call's
    /// key: it reached a server, and was not refused (a 4xx) before the attempt failed
    /// otherwise (a timeout on other work).
    fn key_may_be_carried(&self, class: Class) -> bool {
        self.keyed_request_reached()
            && self.own_carried
            && class.may_have_carried_out(self.status.get(), true)
    }

    /// What this attempt sent, joined to what `other` (another attempt of the same hedged
    /// round) sent: seen only if both were, keyed only if both were, the least safe methods.
    fn join(&mut self, other: &Last) {
        let least = |a: Option<Method>, b: Option<Method>| match (a, b) {
            (Some(a), Some(b)) => Some(a.least_safe(b)),
            (a, b) => a.or(b),
        };
        self.stamped &= other.stamped;
        self.all_keyed &= other.all_keyed;
        self.unsafe_carried |= other.unsafe_carried;
        self.own_carried |= other.own_carried;
        self.method = least(self.method, other.method);
        self.reached = least(self.reached, other.reached);
        if self.gave_up == [0; 4] {
            self.gave_up = other.gave_up;
        }
        if self.returned == [0; 4] {
            self.returned = other.returned;
        }
        self.unseen_helper |= other.unseen_helper;
        self.unproven |= other.unproven;
        // A `Retry-After` the server gave any attempt of the round still says when to come
        // back, whatever the last one got (no answer, or a status of its own without one):
        // the longest, carried through the round however many attempts it had.
        self.retry_after = self.retry_after.max(other.retry_after);
        // Not a sibling's handled one: it governs only this attempt's own response returned.
    }
}

/// What an answered attempt of a hedged round recorded that the retry decision reads: put back
/// in the session's `last` when the round ends on that answer after a later attempt without
/// one (whose timeout cleared the status, and set the runtime's own error).
pub(crate) struct Answered {
    status: crate::context::Status,
    failure: Option<Class>,
    replayed: bool,
    cut_short: bool,
    retry_after_own: bool,
    // The answered attempt's own handled `Retry-After` (see `Last::retry_after_handled`): the
    // later attempt's, left in `last`, was that attempt's own earlier response's, and would
    // govern the answer's status if it were the same.
    retry_after_handled: Option<Duration>,
    /// When it was answered: the backoff and the answer's `Retry-After` count from then, not
    /// from the end of the round, which waited for the attempts still running (a sibling's
    /// timeout 2 s later: the call waited the `Retry-After` again after it, or gave up for a
    /// deadline it would have met).
    at: Instant,
    /// The round's `Retry-After` when it was answered: one the round got later (a sibling's
    /// answer after it) counts from that later answer, not from this one.
    retry_after_then: Option<Duration>,
}

impl Answered {
    pub(crate) fn of(last: &Last) -> Answered {
        Answered {
            at: Instant::now(),
            retry_after_then: last.retry_after,
            status: last.status,
            failure: last.failure,
            replayed: last.replayed,
            cut_short: last.cut_short,
            retry_after_own: last.retry_after_own,
            retry_after_handled: last.retry_after_handled,
        }
    }

    pub(crate) fn restore(self, last: &mut Last) {
        last.status = self.status;
        last.failure = self.failure;
        last.replayed = self.replayed;
        last.runtime = None;
        last.cut_short = self.cut_short;
        last.retry_after_own = self.retry_after_own;
        last.retry_after_handled = self.retry_after_handled;
        last.answered_at = Some(self.at);
        last.answered_retry_after = self.retry_after_then;
    }
}

/// What an attempt's requests recorded (status, Retry-After, stamping, method), kept in `last`;
/// the least safe method sent so far, and whether one that needs the key went without it.
fn record(last: &mut Last, ctx: &AttemptCtx) {
    last.status = ctx.status.packed();
    last.failure = ctx.failure.get();
    last.retry_after = ctx.retry_after.get();
    // A `Retry-After` a nested call passed up is that call's failure's, not this attempt's own.
    last.retry_after_own = last.retry_after.is_some() && !ctx.retry_after_nested.get();
    last.retry_after_handled = ctx.retry_after_handled.get();
    last.replayed = ctx.replayed.get();
    last.conflict_on_read = ctx.conflict_on_read.get();
    last.stamped = ctx.stamped.get();
    last.all_keyed = ctx.all_keyed.get();
    last.method = ctx.sent_method.get();
    last.reached = ctx.reached.get();
    let carried = ctx.unsafe_carried.get();
    last.unsafe_carried = carried & crate::context::CARRIED != 0;
    last.own_carried = carried & crate::context::CARRIED_OWN != 0;
    // Requests made in the attempt but sent from elsewhere (a spawned task): their outcome
    // never came back, so they may have reached the server.
    if ctx.unpolled_outstanding()
        && let Some(m) = ctx.unpolled_method.get()
    {
        last.reached = Some(last.reached.map_or(m, |r| r.least_safe(m)));
        // And it may have been carried out: no fallback answers for it. It was stamped here
        // (under the call's key, in a keyed call).
        if m.needs_key() {
            last.unsafe_carried = true;
        }
        if !m.is_safe() {
            last.own_carried = true;
        }
    }
    last.nested_gave_up = ctx.nested_gave_up.get();
    last.gave_up = ctx.gave_up.get();
    last.returned = ctx.returned.get();
    // A helper still running when the attempt ended (timed out under it) may send anything.
    last.unseen_helper = ctx.unseen_helper.get() || ctx.helpers_running.get() > 0;
    last.unproven = ctx.unproven.get();
}

/// What an attempt of a nested call may have sent, as the enclosing attempt must count it: the
/// least safe method its requests were seen to send, and the one a helper may have sent
/// unseen beside them (as the call's own retry decision counts it, `after_failure`); and
/// whether one that needs the key went without this call's given key (running the enclosing
/// body again starts this call afresh, with a new automatic key). `None`: nothing.
///
/// `settled`: only what is known while the attempt still runs (its requests seen, a helper
/// that ended seen sending nothing), not what it might still send (a helper running, the
/// policy's method not yet seen): said then, it could not be taken back when the attempt
/// ends having sent only what was seen, and the enclosing call would refuse a retry or a
/// hedge for nothing. The rest is told when the attempt ends, or when it is given up on.
fn reportable(
    policy: &Policy,
    key: &Option<Key>,
    ctx: &AttemptCtx,
    settled: bool,
) -> Option<(Method, bool)> {
    let seen = ctx.sent_method.get();
    let unseen = if settled {
        // What it has sent already: a helper seen sending nothing, and another type's unsafe
        // send that ran (an SDK's `send_email()`): no hedge or retry around it sends it again.
        if ctx.unseen_helper.get() {
            Some(policy.method.least_safe(policy.unseen))
        } else if ctx.unproven.get() & crate::context::UNPROVEN_UNSAFE != 0 {
            Some(unproven_unsafe(policy))
        } else {
            None
        }
    } else {
        unseen_beside(
            policy,
            seen,
            ctx.unseen_helper.get() || ctx.helpers_running.get() > 0,
            ctx.unproven.get(),
        )
    };
    let keyed_same = matches!(key, Some(Key::Given(_))) && ctx.all_keyed.get();
    let unkeyed =
        seen.is_some_and(|m| !m.is_safe() && !keyed_same) || unseen.is_some_and(|m| !m.is_safe());
    let method = match (seen, unseen) {
        (Some(a), Some(b)) => a.least_safe(b),
        (a, b) => a.or(b)?,
    };
    Some((method, unkeyed))
}

/// Whether the function is an `idempotent` PUT or DELETE, which says of all it sends that it
/// may go again (`idempotent` on a safe method says nothing of what goes beside it).
fn says_all_may_go_again(policy: &Policy) -> bool {
    policy.idempotent && !policy.method.is_safe()
}

/// What another type's send whose receiver showed no safe method may have sent: anything,
/// unkeyed (the least safe), unless the function [says all it sends may go
/// again](says_all_may_go_again).
fn unproven_unsafe(policy: &Policy) -> Method {
    if says_all_may_go_again(policy) {
        policy.method
    } else {
        policy.method.least_safe(policy.unseen)
    }
}

/// The method an attempt that sent `seen` (the least safe of its requests the runtime saw)
/// may have sent unseen beside it: with a helper that may have sent unseen (`helper`), the
/// least safe; so too after a send of another type whose receiver showed no safe method (an
/// SDK's `ses.send_email()…send()`, a service client's `orders.post(u).send()`): it may have
/// sent anything, and without the call's key, whatever the function's method and the
/// requests seen beside it (as unsafe as they are, or safer); an `idempotent` function says
/// of such a send that it may go again (its method). Else the policy's method where not
/// every request of it is one the runtime sees (or a request went out unproven) and `seen`
/// is safer; else none.
#[inline]
fn unseen_beside(
    policy: &Policy,
    seen: Option<Method>,
    helper: bool,
    unproven: u8,
) -> Option<Method> {
    if helper {
        Some(policy.method.least_safe(policy.unseen))
    } else if unproven & crate::context::UNPROVEN_UNSAFE != 0 {
        Some(unproven_unsafe(policy))
    } else {
        ((!policy.sends_seen || unproven != 0)
            && seen.is_some_and(|m| m.least_safe(policy.method) != m))
        .then_some(policy.method)
    }
}

/// Tells the enclosing attempt (if any: the current one) what an attempt (`ctx`) of a nested
/// call under `policy` may have sent ([`reportable`]).
pub(crate) fn tell_enclosing(policy: &Policy, ctx: &AttemptCtx, settled: bool) {
    if let Some((m, unkeyed)) = reportable(policy, &ctx.key, ctx, settled) {
        let _ = with_attempt(|outer| {
            note_sent(outer, m, unkeyed, under_the_same_key(outer, &ctx.key));
        });
    }
}

/// The shortest wait before asking again for the replay of a keyed request still in progress.
const ASK_FLOOR: Duration = Duration::from_millis(100);

/// The state of one logical call.
#[derive(Debug)]
pub struct Session {
    pub(crate) policy: &'static Policy,
    pub(crate) shared: &'static Resolved,
    started: Instant,
    pub(crate) deadline: Instant,
    /// The time from `started` to `deadline`.
    pub(crate) left_at_start: Duration,
    pub(crate) attempts: u32,
    /// The current attempt's context, kept in place: the call's identities (request id,
    /// trace, key, depth) and what the attempt's requests recorded. Hedges get their own.
    pub(crate) ctx: AttemptCtx,
    /// Inside another call's attempt: what this call reports to it when it ends.
    pub(crate) nested: bool,
    /// Holds its bulkhead slot and rate-limit permit (or needs none).
    admitted: bool,
    /// Backoff, Retry-After and bulkhead waits.
    waited: Duration,
    /// The attempts that asked again for a keyed request's replay (the answer before them a
    /// 409 "still in progress"): run, but counted against neither `max_attempts` nor the budget.
    asks: u32,
    /// The hedges started: attempts beside another, counted against neither `max_attempts`
    /// nor the backoff curve (a stalled hedged round leaves the retries it had).
    pub(crate) hedges: u32,
    /// The failures retried: what makes a call's outcome "with retry". Not the hedges (a
    /// hedge retries no failure: `resilience.client.hedges` counts them) nor the asks for a
    /// replay (nothing run again).
    retried: u32,
    /// When the next attempt may start: set by [`after_failure`](Self::after_failure) when
    /// it decides to retry, waited out by the next [`attempt`](Self::attempt).
    pub(crate) retry_at: Option<Instant>,
    /// The retry budget's token for the retry decided on, until that retry begins: given back
    /// when it never does (refused by the breaker, out of time, its caller gone).
    retry_token: Option<crate::budget::Token>,
    /// The class of the failure whose retry was decided on, until that retry begins: only
    /// then is it counted as retried (a retry the breaker, the deadline or the caller's drop
    /// stopped was never made, and the call did not retry).
    retry_pending: Option<Class>,
    /// The least safe method sent over all attempts, and whether every request carried the key.
    sent: Option<Method>,
    sent_unkeyed: bool,
    backoff: Option<BackoffState>,
    pub(crate) span: tracing::Span,
    pub(crate) last: Last,
    breaker_permit: Option<BreakerPermit<'static>>,
    /// telemetry (issue 12): the attempt in progress (its span, when it started).
    pub(crate) attempt_scope: Option<AttemptScope>,
    _bulkhead: Option<BulkheadPermit<'static>>,
    /// The adaptive concurrency limit's slot: told each attempt's outcome.
    pub(crate) concurrency: Option<crate::concurrency::ConcurrencyPermit>,
    /// Why the call cannot start, found by `begin` (see [`Session::take_refusal`]).
    refusal: Option<Error>,
    /// The runtime's error that [`failed`](Self::failed) put in place of the attempt's own.
    replaced: Option<ErrorKind>,
    /// This call's token, drawn when its error path first needs one (0 until then): the
    /// errors it returns carry it, for the call it is nested in.
    pub(crate) token: Cell<u16>,
    /// The error of the attempt that just failed is one a nested call of that attempt already
    /// retried as far as its policy allowed (told by the error probe).
    pub(crate) returned_inside: Cell<bool>,
    /// The attempt's error is (or holds) a nested call's (read by the probe): the
    /// `Retry-After` of a response the body handled before it does not govern it, whatever
    /// its status (`Last::retry_after_for`).
    pub(crate) failure_nested: Cell<bool>,
    /// The call ended: it succeeded, gave up, or was refused (and counted as such). A session
    /// dropped before it ended was cancelled by its caller (see `Drop`).
    ended: bool,
    /// The class and status of the last attempt that ran and failed, for an error that ends
    /// the call before the next one runs (a breaker that opened between them), and whether
    /// its request that needs the call's key reached a server (see [`Session::name_key`]),
    /// and whether nothing of it under the key was carried out (see `Session::last_settled`).
    ran_last: Option<(Class, Option<u16>, bool, bool)>,
    /// An attempt that failed may have carried out a request that needs a key (its own, a
    /// nested call's or a helper's unseen: see `AttemptCtx::unsafe_carried`): no fallback
    /// answers in the call's place (see [`Session::fallback_allowed`]).
    carried_out: bool,
    /// An attempt that failed may have carried out a request of its own under the call's key
    /// (timed out, lost its connection, answered 2xx, 3xx, 5xx or 409): the call's error says
    /// so with the key, whatever the last attempt's failure.
    key_carried: bool,
    /// An enclosing call holds a permit of this call's breaker (or a slot of its bulkhead or
    /// concurrency limit): this call runs under it (see [`Held`](crate::context::Held)).
    breaker_held: bool,
    bulkhead_held: bool,
    concurrency_held: bool,
}

impl Session {
    /// Starts a call: fixes its deadline and identities, then takes a bulkhead slot and a
    /// rate-limit permit when the policy has them. [`begin`](Self::begin) then
    /// [`admit`](Self::admit).
    pub async fn start(
        policy: &'static Policy,
        state: &'static PolicyState,
        key: KeyArg,
    ) -> Result<Session, Error> {
        let mut session = Session::begin(policy, state, key);
        if let Some(e) = session.take_refusal() {
            return Err(e);
        }
        if !session.admitted() {
            session.admit().await?;
        }
        Ok(session)
    }

    /// The error of a call its breaker refuses before it starts (open, or half-open with every
    /// probe running and none held by an enclosing call: no ids, no span, no deadline, nothing
    /// is sent), or `None` when the call goes ahead. Counted as the refusal
    /// of a first attempt would be (one call refused by the breaker); no attempt ran.
    pub fn refused(policy: &'static Policy, state: &'static PolicyState) -> Option<Error> {
        state.resolve(policy);
        Session::refused_compiled(state)
    }

    /// [`refused`](Self::refused) for a function `#[resilient]` compiled
    /// ([`PolicyState::compiled`]), or whose state [`refused`](Self::refused) resolved.
    pub fn refused_compiled(state: &'static PolicyState) -> Option<Error> {
        let shared = state.resolve_compiled();
        let breaker = shared.breaker?;
        match breaker.refuses_now() {
            Refusal::No => None,
            refusal => {
                // Not refused after all (an enclosing call holds the half-open probe): the
                // call draws its key when it begins.
                let refused = refused_by_breaker_at_start(shared, breaker, refusal)?;
                // Its place under a handler whose keys are derived is taken all the same: the
                // calls after it keep their keys whether or not this one ran.
                // Kept for its fallback, whose calls take theirs under it.
                if crate::context::inbound_in_use_yet() {
                    crate::context::refused_place(shared.function);
                }
                Some(refused)
            }
        }
    }

    /// Starts a call without waiting: fixes its deadline and identities. A policy without a
    /// bulkhead, a concurrency limit or a rate limit is then [`admitted`](Self::admitted);
    /// otherwise [`admit`](Self::admit) takes the slot and the permit.
    ///
    /// Inside an attempt of another `#[resilient]` call, the call plans within that attempt's
    /// time and joins its trace; inside a request handled under
    /// [`ContextLayer`](crate::server::ContextLayer), within the caller's time and trace.
    ///
    /// Not `async`, and not a `Result`: the session is built where the caller keeps it, not
    /// moved out of a future or a `Result` of its own. [`take_refusal`](Self::take_refusal)
    /// says whether it may go on.
    pub fn begin(policy: &'static Policy, state: &'static PolicyState, key: KeyArg) -> Session {
        state.resolve(policy);
        Session::begin_compiled(state, key)
    }

    /// [`begin`](Self::begin) for a function `#[resilient]` compiled
    /// ([`PolicyState::compiled`]): its policy is the one packed in `state` (or the one
    /// [`begin`](Self::begin) resolved it with).
    pub fn begin_compiled(state: &'static PolicyState, key: KeyArg) -> Session {
        let shared = state.resolve_compiled();
        let policy = crate::overrides::current(shared.compiled, &state.current);
        let mut refusal = None;
        // Under a handler whose keys are derived (`derive_call_keys`), the call takes its
        // place there (refused or not: the calls after it keep theirs), and is registered
        // (`call`): the calls nested in it take theirs under it.
        let (call, place) = if crate::context::inbound_in_use_yet() {
            crate::context::enter_call(shared.function, true)
        } else {
            (0, None)
        };
        let key = match key {
            KeyArg::None => None,
            KeyArg::Auto => Some(Key::Auto(
                // Under such a handler, the same key each time it runs for its request.
                place.unwrap_or_else(uuid::Uuid::new_v4),
                crate::client::KeyFormat::current(),
            )),
            KeyArg::Given(Ok(h)) => Some(Key::Given(h)),
            KeyArg::Given(Err(e)) => {
                refusal = Some(e);
                None
            }
        };
        if let Some(e) = shared.broken {
            refusal = Some(Error::call(e.clone()));
        }
        if let Some(e) = &mut refusal {
            refused_at_start(shared, e);
            // Inside an attempt, its refusal goes back into it (as a breaker's refusal at the
            // start does): the enclosing call writes its attempts and key into the error
            // where its function's own error type holds it out of reach.
            e.leaving();
        }
        debug_assert!(
            key.is_some() || refusal.is_some() || policy.idempotency_key == KeySource::None
        );
        // One clock read for the start, the deadline, the budget and the first attempt. The
        // deadline counts from here: the wait for a bulkhead slot is part of the call.
        let started = Instant::now();
        let mut deadline = started + policy.deadline;
        let mut left = policy.deadline;
        let outer: Option<Outer> = with_attempt(|o| {
            // A nested call is one the runtime sees, refused or not: it reports what it sends.
            o.saw();
            if refusal.is_some() {
                return None;
            }
            o.went_on_to_another();
            Some(o.outer())
        })
        .flatten();
        let nested = outer.is_some();
        // Run again by the enclosing call's retry under a key its body gives it, the same as
        // before: an earlier run may have carried out its request under that key, and its
        // fallback must not answer as if nothing had been (the caller would act on it).
        let carried_before =
            outer.as_ref().is_some_and(|o| o.carried_before) && matches!(key, Some(Key::Given(_)));
        // The enclosing calls' breakers, bulkheads and concurrency limits: this call runs
        // under their permits where its own are among them (`own_states`, read again where
        // each is needed: kept in registers across the function, the addresses pushed other
        // values to the stack). A held breaker is asked again at each attempt
        // (`begin_attempt`). An outermost call's states are written where the session is
        // built; a nested call's are put there after (a value chosen between the two was built
        // on the stack and copied in 16-byte pieces from stores it could not be forwarded
        // from: a stall on every call).
        let nested_held = outer.as_ref().map(|o| o.held.nested(own_states(shared)));
        let [breaker_held, bulkhead_held, concurrency_held] = nested_held
            .as_ref()
            .map_or([false; 3], |(_, already)| *already);
        let (trace_id, trace_flags, request_id, request_id_text, depth) = match outer {
            Some(o) => {
                if o.until < deadline {
                    deadline = o.until;
                    left = deadline.saturating_duration_since(started);
                }
                // A context handed in within the attempt (`with_inbound(Inbound::NONE
                // .time_left(d), call)` in the body) binds the call too, the nearer deadline of
                // the two; not its ids: the call is in the attempt's trace.
                if crate::context::inbound_in_use_yet()
                    && let Some(d) = crate::context::inbound_deadline()
                    && d < deadline
                {
                    deadline = d;
                    left = deadline.saturating_duration_since(started);
                }
                (
                    o.trace_id,
                    o.trace_flags,
                    o.request_id,
                    o.request_id_text,
                    o.depth.saturating_add(1),
                )
            }
            // Nothing handed down in this process: the ids are drawn when first asked for
            // (`AttemptCtx::trace_id`).
            None if !crate::context::inbound_in_use_yet() => (0, 1, 0, None, 0),
            None => {
                let inbound = crate::context::inbound();
                if let Some(d) = inbound.deadline
                    && d < deadline
                {
                    deadline = d;
                    left = deadline.saturating_duration_since(started);
                }
                // The caller's ids, or 0: drawn when first asked for (`AttemptCtx::trace_id`).
                let (trace, flags) = match inbound.trace {
                    Some((t, _, f)) => (t, f),
                    None => (0, 1),
                };
                (
                    trace,
                    flags,
                    inbound.request_id.unwrap_or(0),
                    inbound.request_id_text,
                    0,
                )
            }
        };
        // Admitted at once (no bulkhead, no concurrency limit, a local rate limit with a
        // permit free now), or refused at once: decided before the session is built, so that
        // it is built in one piece where it is returned, not built and then changed.
        let admitted = refusal.is_none()
            && (shared.bulkhead.is_none() || bulkhead_held)
            && (shared.concurrency.is_none() || concurrency_held)
            && match shared.rate_limit {
                None => true,
                // No time left: the admission's full path refuses it, taking no permit.
                Some(_) if deadline <= started => false,
                // A local limit with a permit free now: no wait, no future.
                Some(r) => match crate::ratelimit::admit_now(r, shared, started, started) {
                    Some(Ok(())) => true,
                    Some(Err(e)) => {
                        refusal = Some(e);
                        false
                    }
                    None => false,
                },
            };
        // Admitted, before this call sends anything, tell the enclosing attempt what it may
        // send: if that attempt ends while this call is still running (its timeout cancels
        // this call), it must not run its body again and resend this call's request under a
        // new automatic key. Not before: a call refused its slot or permit sent nothing
        // (`opened` tells it for a call admitted after a wait).
        // One that waits for its slot or permit may still send: the enclosing attempt counts
        // it as a helper running (no hedge beside it, no retry of an attempt ended under it)
        // until it is admitted, refused or dropped.
        if nested {
            if admitted {
                tell_admitted(policy, &key);
            } else if refusal.is_none() {
                tell_waiting(true);
            }
        }
        // The span first (an enabled one draws the request id), then the context, built in
        // place in the session.
        let request_id = Cell::new(request_id);
        let span = if admitted {
            open(
                shared,
                policy,
                started,
                deadline,
                &request_id,
                request_id_text.as_deref(),
                depth,
            )
        } else {
            tracing::Span::none()
        };
        let mut session = Session {
            policy,
            shared,
            started,
            deadline,
            left_at_start: left,
            attempts: 0,
            ctx: AttemptCtx::new(
                request_id.get(),
                request_id_text,
                trace_id,
                trace_flags,
                key,
                deadline,
                depth,
                Held::outermost(own_states(shared)),
                call,
                // Its own nested calls given a key are told too (see `carried_before`).
                u8::from(carried_before) * crate::context::CARRIED_BEFORE,
            ),
            nested,
            admitted,
            waited: Duration::ZERO,
            asks: 0,
            hedges: 0,
            retried: 0,
            retry_at: None,
            retry_token: None,
            retry_pending: None,
            sent: None,
            sent_unkeyed: false,
            backoff: None,
            span,
            last: Last::default(),
            breaker_permit: None,
            attempt_scope: None,
            _bulkhead: None,
            concurrency: None,
            // A call refused at once ends here: its refusal is its outcome, not a cancellation.
            ended: refusal.is_some(),
            refusal,
            replaced: None,
            token: Cell::new(0),
            returned_inside: Cell::new(false),
            failure_nested: Cell::new(false),
            ran_last: None,
            carried_out: carried_before,
            key_carried: false,
            breaker_held,
            bulkhead_held,
            concurrency_held,
        };
        if let Some((held, _)) = nested_held {
            session.ctx.held = held;
        }
        session
    }

    /// Why the call cannot start, when [`begin`](Self::begin) found out at once: an invalid
    /// idempotency key, or a rate limit that refuses without a wait. Taken once; not taken,
    /// the call's first attempt returns it (and [`admitted`](Self::admitted) says there is
    /// nothing to wait for).
    #[inline]
    pub fn take_refusal(&mut self) -> Option<Error> {
        self.refusal.take()
    }

    /// Whether the call may make its first attempt: it has its bulkhead (or concurrency-limit)
    /// slot and its rate-limit permit, or its policy has neither.
    #[inline]
    pub fn admitted(&self) -> bool {
        // Refused at its start: nothing to wait for; its first attempt returns the refusal.
        self.admitted || self.refusal.is_some()
    }

    /// Takes the bulkhead or concurrency-limit slot if one is free now, without a future:
    /// true when that admits the call (it has no rate limit, whose permit
    /// [`admit`](Self::admit) then takes). False: `admit` waits for (or refuses) what is left.
    #[inline]
    pub fn admit_now(&mut self) -> bool {
        let shared = self.shared;
        // No time left: admitted with nothing taken (see `take_slots`).
        if self.deadline <= self.started {
            self.opened();
            return true;
        }
        if let Some(b) = shared.bulkhead.filter(|_| !self.bulkhead_held)
            && !b.try_acquire_into(&mut self._bulkhead)
        {
            return false;
        }
        if let Some(c) = shared.concurrency.filter(|_| !self.concurrency_held)
            && !c.try_acquire_into(self.started, &mut self.concurrency)
        {
            return false;
        }
        if shared.rate_limit.is_some() {
            return false;
        }
        self.opened();
        true
    }

    /// Takes the bulkhead or concurrency-limit slot, then the rate-limit permit, within the
    /// deadline.
    pub async fn admit(&mut self) -> Result<(), Error> {
        let admitted = self.take_slots().await;
        if admitted.is_err() {
            // Refused a slot or a permit (counted as such), or out of time: the call ends
            // here, and a slot taken before a refused permit is free again at once (for the
            // fallback's own calls and the next caller), not when the session is dropped.
            self.ended = true;
            self.release_slot();
            self.concurrency = None;
            if self.nested {
                tell_waiting(false);
            }
        }
        admitted
    }

    /// [`admit`](Self::admit), keeping a refusal for the call's first attempt to return (as
    /// one found at its start): the expansion's admission, with no return path of its own.
    pub async fn admit_or_refuse(&mut self) {
        if let Err(e) = self.admit().await {
            self.refusal = Some(e);
        }
    }

    async fn take_slots(&mut self) -> Result<(), Error> {
        let shared = self.shared;
        let (started, deadline) = (self.started, self.deadline);
        // No time left at all (a caller's `X-Timeout-Ms: 0`, an outer attempt run out): no
        // slot, no permit, and no refusal by a full bulkhead or limit either (which would have
        // an operator raise a limit the call could not have used): its first attempt ends it
        // out of time, as the same call with a slot free would end.
        if deadline <= started {
            self.opened();
            return Ok(());
        }
        // A wait ends with time left to send the first attempt: a tenth of its `timeout` (of
        // the time the call was handed, when that is less), as a retry needs to begin. A slot
        // or permit that comes later is refused now, and nothing is sent that could only
        // time out, leaving a keyed POST's outcome unknown.
        let deadline = deadline - self.policy.timeout.min(self.left_at_start) / 10;
        // Not when the call's start took a slot free then (its rate limit then waits).
        if let Some(b) = shared
            .bulkhead
            .filter(|_| !self.bulkhead_held && self._bulkhead.is_none())
        {
            match b.acquire_by(deadline).await {
                Ok(p) => self._bulkhead = Some(p),
                Err(why) => {
                    let full = why == crate::bulkhead::Refused::Full;
                    if crate::counters::warn_enabled!()
                        && let Some(suppressed) = shared.metrics.refusal_logged(Refusals::Bulkhead)
                    {
                        // An inline bulkhead goes by its function's path, as in its metrics.
                        let name = self
                            .policy
                            .bulkhead
                            .as_ref()
                            .map(|b| if b.0.is_empty() { shared.function } else { b.0 });
                        tracing::warn!(
                            function = shared.function,
                            policy = shared.policy,
                            bulkhead = name,
                            suppressed,
                            "{}: call rejected",
                            if full {
                                "bulkhead full"
                            } else {
                                "deadline reached waiting for a bulkhead slot"
                            }
                        );
                    }
                    return Err(slot_refused(shared, full, started));
                }
            }
        }
        // An adaptive concurrency limit, in the bulkhead's place (never both).
        if let Some(c) = shared
            .concurrency
            .filter(|_| !self.concurrency_held && self.concurrency.is_none())
        {
            self.concurrency = Some(crate::concurrency::admit(c, shared, deadline, started).await?);
        }
        // The rate limit, after the bulkhead (a call refused a slot spends no permit) and
        // within the deadline. The slot is held while it waits: the gauge says so now.
        // (A call with no time left at all when it began took none above. One whose time to
        // wait ran out since, its slot granted at the edge or its start and admission apart,
        // is refused by the limit, no permit spent: not let through without one, to send with
        // less than a tenth of its `timeout` left.)
        // (Such a refusal counts as the limit's, as a bulkhead's wait that ended does, whether
        // or not a permit was free: rare, and the call could not have sent in time.)
        if let Some(r) = shared.rate_limit {
            if self._bulkhead.is_some() {
                telemetry::bulkhead_moved(shared);
            }
            crate::ratelimit::admit(r, shared, deadline, started).await?;
        }
        if (self._bulkhead.is_some()
            && shared
                .bulkhead
                .is_some_and(|b| !b.spec().max_wait.is_zero()))
            // A shared limit waits for Redis's answer, whatever its `max_wait`.
            || shared.rate_limit.is_some_and(|r| {
                !r.spec().max_wait.is_zero()
                    || r.spec().store == crate::ratelimit::RateLimitStore::Redis
            })
            || shared
                .concurrency
                .is_some_and(|c| !c.spec().max_wait.is_zero())
        {
            self.waited = started.elapsed();
        }
        self.opened();
        Ok(())
    }

    /// The call is admitted: counted, deposited in the budget, given its span; a nested
    /// call tells the enclosing attempt what it may send (as `begin_compiled` does for one
    /// admitted at once).
    fn opened(&mut self) {
        self.admitted = true;
        if self.nested {
            tell_admitted(self.policy, &self.ctx.key);
            tell_waiting(false);
        }
        let ctx = &self.ctx;
        self.span = open(
            self.shared,
            self.policy,
            self.started,
            self.deadline,
            ctx.request_id_cell(),
            ctx.request_id_text.as_deref(),
            ctx.depth,
        );
    }

    /// What ended the call after [`Next::Return`]: the runtime's own limit, or the
    /// function's own error (for `fallback_on`).
    ///
    /// `found`: the kind of the runtime error the returned error is or wraps (a nested call's
    /// open breaker or timeout), as `Error::kind()` tells the caller; it counts when the
    /// call's own limits did not end it.
    pub fn final_kind(&self, found: Option<ErrorKind>) -> ErrorKind {
        self.replaced
            .or(self.last.runtime)
            .or(found)
            .unwrap_or(ErrorKind::Call)
    }

    /// Whether the call's fallback may answer in its place: not after an attempt that may have
    /// carried out a request that needs a key (a charge answered 2xx, 3xx, 5xx or 409 "still
    /// in progress", or that timed out or lost its connection, whatever failed after it). Its
    /// answer would hide that: a caller told "declined" or "queued" sends the charge again.
    /// The call's error says what happened, and names its key.
    pub fn fallback_allowed(&self) -> bool {
        !self.carried_out
    }

    /// How many attempts have started.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The status an error made for a failure of `class` names: a status failure's own (a
    /// nested call's 503, where the attempt's last response of its own was a 200 before
    /// it), else the attempt's last response's: none for a nested call's failure without a
    /// response (its timeout, a reset), which the body's own earlier 200 says nothing of.
    fn status_of(&self, class: Class) -> Option<u16> {
        match class {
            Class::Status(s) => Some(s),
            _ if self.last.nested_failure => None,
            _ => self.last.status.get(),
        }
    }

    /// Whether the attempt about to begin is an ask for the replay of the call's request still
    /// in progress (a 409): every attempt after the first that is not a retry
    /// (`after_failure`). Asked before `begin_attempt`, which takes the pending retry.
    pub(crate) fn asking_next(&self) -> bool {
        self.attempts > 0 && self.retry_pending.is_none()
    }

    /// Time since the call started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn runtime_error(&mut self, kind: ErrorKind, class: Class) -> Error {
        self.last.runtime = Some(kind);
        let mut err = Error::new(kind)
            .with_attempts(self.attempts)
            .with_class(Some(class), self.last.status.get())
            .with_elapsed(self.started.elapsed());
        self.name_key(&mut err);
        if self.nested {
            err.leaving();
        }
        err
    }

    /// The call's key on a refusal made after attempts ran (an open breaker, no time, an
    /// exhausted budget), and whether the last attempt's request that needs it reached a
    /// server: a connect failure after a keyed POST was answered may have been carried out,
    /// as the error made from the attempt's own says (`Probe::note`).
    fn name_key(&self, err: &mut Error) {
        err.set_key(self.ctx.named_key());
        if self.attempts > 0 && self.ran_last.is_some_and(|r| r.2) {
            err.set_reached();
        }
        if self.attempts > 0 && self.key_carried {
            err.set_carried();
        }
        // The attempt that just ran, or, for a retry refused before it began (the breaker,
        // the deadline), the one before it.
        let settled = if self.last.began {
            self.last_settled()
        } else {
            self.attempts > 0 && self.ran_last.is_some_and(|r| r.3)
        };
        if settled {
            err.set_settled(true);
        }
    }

    /// Keyed, and nothing of the attempt's own that needs the key may have been carried out
    /// (its keyed requests refused with a 4xx, or none sent; nothing in flight, no helper
    /// sending unseen): whatever the attempt then failed on (a timeout on other work, a GET's
    /// 503) does not make it so.
    pub(crate) fn last_settled(&self) -> bool {
        self.ctx.key.is_some() && !self.last.own_carried && !self.last.unseen_helper
    }

    /// Whether an attempt that ended may have carried out a request of its own under the
    /// call's key (see `key_carried`): what the call's error then says with the key.
    pub(crate) fn any_carried_out(&self) -> bool {
        self.key_carried
    }

    /// Runs one attempt of the body (in its slot, `pin!(Some(body))`) under the breaker and the
    /// attempt timeout: an [`Attempt`](crate::attempt::Attempt), generic over the body's
    /// output only.
    #[inline]
    pub fn attempt<'b, T, E, F>(
        &mut self,
        body: std::pin::Pin<&'b mut Option<F>>,
    ) -> crate::attempt::Attempt<'_, 'b, F>
    where
        F: Future<Output = Result<T, E>> + 'b,
        E: HoldsRuntimeErrors,
    {
        // Built here, not by a constructor of its own: one generic function fewer per body.
        crate::attempt::Attempt {
            core: crate::attempt::Core::new(self),
            body,
        }
    }

    /// Runs one attempt like [`attempt`](Self::attempt), with hedges when the policy has
    /// `hedge`: `make` gives a fresh future of the body for each (see `hedge.rs`).
    pub async fn attempt_hedged<T, E, M, F>(&mut self, make: M) -> Result<T, E>
    where
        M: FnMut() -> F,
        F: Future<Output = Result<T, E>>,
        E: HoldsRuntimeErrors,
    {
        crate::hedge::run(self, make).await
    }

    /// Counts the attempt, asks the breaker, and computes the attempt's time limit: when it
    /// ends, and how long it may run. The session's own context ([`Session::ctx`]) is made the
    /// new attempt's, in place.
    #[inline]
    pub(crate) fn begin_attempt(&mut self) -> Result<(Instant, Duration), Error> {
        // Refused at its start or by its admission (an invalid key, a full bulkhead, the rate
        // limit), the refusal not taken with `take_refusal`: the first attempt returns it,
        // counted when it was refused; the call has ended.
        if let Some(mut e) = self.refusal.take() {
            self.replaced = Some(e.kind());
            if self.nested {
                e.leaving();
            }
            return Err(e);
        }
        // What the previous attempt left; the first finds it as the session was built (nothing
        // writes it before an attempt begins), not written a second time.
        if self.attempts > 0 {
            self.last = Last::default();
        }
        // The first attempt starts when the call does: no second clock read.
        let first = self.attempts == 0 && self.waited.is_zero();
        let now = if first { self.started } else { Instant::now() };
        // No time left (a caller's `X-Timeout-Ms: 0`, a backoff that woke at the deadline):
        // nothing is sent, so neither the breaker nor the concurrency limit hears of it.
        if now >= self.deadline || self.retry_pending.is_some() && self.woken_late(now) {
            self.give_back_retry();
            return Err(self.out_of_time());
        }
        // Held by the enclosing call (see `runs_under_enclosing_permit`), asked again at each
        // attempt: a nested call that began while the breaker was closed and retries after it
        // has opened and gone half-open takes a probe of its own, or is refused.
        if let Some(b) = self
            .shared
            .breaker
            .filter(|b| !self.breaker_held || !runs_under_enclosing_permit(b, &self.ctx.held))
        {
            match b.try_acquire_into(now, &mut self.breaker_permit) {
                Ok(false) => {}
                // A half-open probe: calls nested in this attempt under the same breaker run
                // under it (see `runs_under_enclosing_permit`).
                Ok(true) => self
                    .ctx
                    .held
                    .mark_probe(std::ptr::from_ref(b) as usize, true),
                // An ask for the replay of the call's request still in progress (a 409; every
                // attempt after the first that is not a retry: `after_failure`) runs nothing
                // again: not refused, whatever the breaker says meanwhile (another call's
                // timeout opened it), and reported to it only under a permit. Refused, the
                // call failed while its charge went through, and its answer was lost.
                Err(_) if self.asking_next() => {}
                Err(_) => {
                    self.give_back_retry();
                    return Err(self.rejected_by_breaker(b.name()));
                }
            }
        }
        // Counted once it runs: `Error::attempts` is the number of attempts that ran, not
        // one the breaker or the deadline refused.
        self.attempts += 1;
        self.last.began = true;
        if let Some(c) = &mut self.concurrency {
            c.attempt_started(now);
        }
        // telemetry (issue 12): the attempt's span, a child of the call's.
        self.attempt_scope = AttemptScope::start(&self.span, self.policy, self.attempts, now);
        // Its own timeout, or the time left before the deadline when that is shorter (a
        // subtraction only then, or at the first attempt, whose time left is known).
        let timeout = self.policy.timeout;
        let (until, limit) = match now.checked_add(timeout) {
            Some(end) if end <= self.deadline => (end, timeout),
            _ => self.cut_to_deadline(first, now),
        };
        let c = &mut self.ctx;
        c.attempt = self.attempts;
        c.new_span();
        c.until = until;
        if self.attempts > 1 {
            c.reset();
            // The retry is made: its token spent, and now counted.
            self.retry_token = None;
            if let Some(class) = self.retry_pending.take() {
                self.retry_made(class);
            }
        }
        Ok((until, limit))
    }

    /// Whether a retry woken at `now` (its backoff over, late: a busy runtime, a paused clock
    /// moved on) has less than a tenth of its `timeout` (of the call's whole time, when that is
    /// shorter) left: the decision would not have begun it then, and it could only time out.
    #[cold]
    #[inline(never)]
    fn woken_late(&self, now: Instant) -> bool {
        self.too_little_left(self.deadline.saturating_duration_since(now))
    }

    /// Whether `left` before the deadline is under a tenth of the attempt's `timeout` (of the
    /// call's whole time, when that is shorter): an attempt begun then could only time out,
    /// and cut that short it says nothing to the breaker. No retry or hedge begins so.
    pub(crate) fn too_little_left(&self, left: Duration) -> bool {
        left < self.policy.timeout.min(self.left_at_start) / 10
    }

    /// The attempt's limit when the deadline comes before its own timeout, out of line: the
    /// time left, and whether it is under a tenth of `timeout` (see [`Last::cut_short`]).
    #[cold]
    #[inline(never)]
    fn cut_to_deadline(&mut self, first: bool, now: Instant) -> (Instant, Duration) {
        let limit = if first {
            self.left_at_start
        } else {
            self.deadline.saturating_duration_since(now)
        };
        self.last.cut_short = self.cut_short(limit);
        (self.deadline, limit)
    }

    /// Whether an attempt given `limit` was cut under a tenth of its `timeout`: too short to
    /// say anything of the dependency (see [`Last::cut_short`]).
    fn cut_short(&self, limit: Duration) -> bool {
        limit < self.policy.timeout / 10
    }

    /// The retry decided on after a failure of `class` begins: the call has retried.
    #[inline(never)]
    fn retry_made(&mut self, class: Class) {
        self.retried += 1;
        PolicyMetrics::incr(&self.shared.metrics.retries);
        telemetry::retry_made(self.shared, class);
    }

    /// The retry decided on will not be made: its budget token goes back.
    #[inline]
    fn give_back_retry(&mut self) {
        if let (Some(t), Some(b)) = (self.retry_token.take(), self.shared.budget) {
            b.give_back(t);
        }
    }

    /// No time left for the next attempt, out of line. After attempts that ran, the error's
    /// class and status are the last of them (a 503 the backoff after it outlasted), as for a
    /// refusal by the breaker.
    #[inline(never)]
    fn out_of_time(&mut self) -> Error {
        let mut e = self.runtime_error(ErrorKind::DeadlineExceeded, Class::Timeout);
        if let Some((class, status, ..)) = self.ran_last.filter(|_| self.attempts > 0) {
            e.set_class(Some(class));
            e.set_answered(status);
        }
        e
    }

    /// An attempt refused by the open breaker, out of line. After attempts that ran, the
    /// error's class and status are the last of them (a timeout of a keyed POST may have been
    /// carried out: the message names the key), not the refusal's.
    #[inline(never)]
    fn rejected_by_breaker(&mut self, breaker: &'static str) -> Error {
        PolicyMetrics::incr(&self.shared.metrics.rejected_breaker);
        self.span.in_scope(|| {
            if crate::counters::warn_enabled!()
                && let Some(suppressed) = self.shared.metrics.refusal_logged(Refusals::Breaker)
            {
                // Its function and policy too: a log kept at warn leaves the call's span out.
                tracing::warn!(
                    function = self.shared.function,
                    policy = self.shared.policy,
                    attempt = self.attempts + 1,
                    breaker,
                    suppressed,
                    "circuit open: call rejected"
                )
            }
        });
        let mut e = self.runtime_error(ErrorKind::CircuitOpen, Class::Rejected);
        if let Some((class, status, ..)) = self.ran_last.filter(|_| self.attempts > 0) {
            e.set_class(Some(class));
            e.set_answered(status);
        }
        e
    }

    /// A context of its own for a hedge (or a hedged policy's first attempt) numbered
    /// `self.attempts`, ending at `until`: the call's identities, a span id of its own,
    /// nothing recorded.
    pub(crate) fn attempt_ctx(&self, until: Instant) -> AttemptCtx {
        let c = &self.ctx;
        // An earlier round may have carried out a request that needs a key (or the call was
        // told so as it began): the nested calls of this one, given their keys again, are told
        // so (see `CARRIED_BEFORE`).
        let carried = if self.carried_out || c.carried_before() {
            crate::context::CARRIED_BEFORE
        } else {
            0
        };
        let mut ctx = AttemptCtx::new(
            c.request_id(),
            c.request_id_text.clone(),
            c.trace_id(),
            c.trace_flags,
            c.key.clone(),
            until,
            c.depth,
            c.held,
            c.call,
            carried,
        );
        ctx.attempt = self.attempts;
        ctx
    }

    /// Whether the body may run once more alongside an attempt in flight (a hedge), given
    /// what that attempt was seen to send: every request of it, and any it may be sending
    /// unseen, must be harmless to send twice. The same facts as after a failed attempt whose
    /// requests may all have reached the server: the least safe method seen (or, when nothing
    /// was seen, the policy's `unseen` one), whether every request carried the call's key (a
    /// nested call's POST under an automatic key of its own did not: running it again draws a
    /// new one; under `derive_call_keys` the same one, which is not relied on either),
    /// and the policy's method when the seen requests were all safer (it may go out unseen).
    pub(crate) fn may_duplicate(&self, ctx: &AttemptCtx) -> bool {
        let policy = self.policy;
        if !ctx.stamped.get() || ctx.unseen_helper.get() || ctx.helpers_running.get() > 0 {
            return crate::decision::may_resend(
                policy.method.least_safe(policy.unseen),
                false,
                says_all_may_go_again(policy),
            );
        }
        let seen = ctx.sent_method.get();
        let method = seen.map_or(policy.method, |m| policy.method.least_safe(m));
        let keyed = self.ctx.key.is_some() && ctx.all_keyed.get();
        let unseen = unseen_beside(policy, seen, false, ctx.unproven.get());
        // `idempotent` speaks of what a PUT or DELETE sends, not of what goes beside a GET.
        let idempotent = says_all_may_go_again(policy);
        crate::decision::may_resend(method, keyed, idempotent)
            && unseen.is_none_or(|m| crate::decision::may_resend(m, false, idempotent))
    }

    /// Whether an attempt [`may_duplicate`](Self::may_duplicate) refused may yet be found
    /// harmless: it has sent nothing the runtime saw so far (a lock or a cache awaited before
    /// its request), or a helper it awaits is still running. Not once a helper ended having
    /// sent nothing seen, or a request it sent may not go out twice.
    pub(crate) fn may_duplicate_later(&self, ctx: &AttemptCtx) -> bool {
        !ctx.unseen_helper.get() && (!ctx.stamped.get() || ctx.helpers_running.get() > 0)
    }

    /// The answer the call takes came from an attempt that began at `start` (a hedge): its
    /// breaker permit times slowness from then, and its adaptive limit the latency.
    pub(crate) fn answer_started(&mut self, start: Instant) {
        if let Some(c) = &mut self.concurrency {
            c.attempt_started(start);
        }
        if let Some(p) = &mut self.breaker_permit {
            p.started_at(start);
        }
    }

    /// Keeps what a hedge's (or a hedged first attempt's) requests recorded.
    pub(crate) fn record_attempt(&mut self, ctx: &AttemptCtx) {
        // Which key the call's requests carried, for the key its error names (`named_key`).
        if ctx.key_sent.get() {
            self.ctx.key_sent.set(true);
        }
        if ctx.foreign_key.get() {
            self.ctx.foreign_key.set(true);
        }
        record(&mut self.last, ctx);
        if self.nested {
            self.keep_sent(Some(ctx));
        }
    }

    /// Keeps what an attempt of a hedged round that ended without the call's answer recorded,
    /// joined to what the round's attempts that ended before it sent (`round`): the retry
    /// decision after the round weighs every request of it, not only the last attempt's (a
    /// hedge that sent a helper's POST unseen, then the first attempt's 503).
    pub(crate) fn record_in_round(
        &mut self,
        ctx: &AttemptCtx,
        round: &mut Option<Last>,
        class: Option<Class>,
    ) {
        self.record_attempt(ctx);
        // This attempt's own keyed request may have been carried out (it timed out, lost its
        // connection; not one refused with a 4xx before the attempt ended otherwise): the
        // call's error says so with the key, whatever the round's last attempt then gets (a
        // hedge answered 429).
        if class.is_some_and(|c| self.last.key_may_be_carried(c)) {
            self.key_carried = true;
        }
        if let Some(before) = round {
            self.last.join(before);
        }
        *round = Some(self.last);
    }

    /// The `Retry-After` of a keyed request's "still in progress" (409 with `Retry-After`, not
    /// a replay; see [`crate::decision::in_progress`]), when that is what this attempt's
    /// requests were last answered.
    pub(crate) fn in_progress_of(&self, ctx: &AttemptCtx) -> Option<Duration> {
        let keyed = self.ctx.key.is_some() && ctx.stamped.get() && ctx.all_keyed.get();
        // Its own `Retry-After` (not one a nested call passed up after it), or one the body
        // went on past (a nested call after the 409).
        (keyed
            && !ctx.replayed.get()
            && !ctx.conflict_on_read.get()
            && ctx.status.get() == Some(409))
        .then(|| {
            ctx.retry_after
                .get()
                .filter(|_| !ctx.retry_after_nested.get())
                .or(ctx.retry_after_handled.get())
        })
        .flatten()
    }

    /// Keeps what the attempt's requests recorded in the session's own context.
    pub(crate) fn record_own(&mut self) {
        record(&mut self.last, &self.ctx);
        if self.nested {
            self.keep_sent(None);
        }
    }

    /// What a successful attempt's requests recorded, of what the call's end reads: its last
    /// status (the span and the debug event) and what it sent (for the enclosing call). The
    /// rest of `last` (what a retry decision or an error reads) stays as the attempt began.
    #[inline]
    pub(crate) fn record_own_success(&mut self) {
        let ctx = &self.ctx;
        self.last.status = ctx.status.packed();
        if let Some(m) = ctx.sent_method.get() {
            self.last.method = Some(m);
        }
        if self.nested {
            self.keep_sent(None);
        }
    }

    /// Adds what an attempt of this nested call may have sent ([`reportable`]: `other`, a
    /// hedge's context, else the session's own) to what the call reports to the enclosing
    /// attempt when it ends.
    #[inline(never)]
    fn keep_sent(&mut self, other: Option<&AttemptCtx>) {
        let ctx = other.unwrap_or(&self.ctx);
        if let Some((m, unkeyed)) = reportable(self.policy, &self.ctx.key, ctx, false) {
            self.sent = Some(self.sent.map_or(m, |s| s.least_safe(m)));
            self.sent_unkeyed |= unkeyed;
        }
    }

    /// Tells the enclosing attempt, while this nested call's attempt (`ctx`) is still running,
    /// what it may have sent so far (its own nested calls' requests included): the enclosing
    /// call must neither hedge beside it nor run its body again after it, should it give up
    /// on this call (its own timeout firing first, a body's `timeout` around this call, a
    /// hedge that won) before this call ends and reports. Called after each poll of a nested
    /// call's attempt that left it pending: what it learnt there, from its own nested calls,
    /// goes up one level, and on up at their callers' polls.
    #[cold]
    #[inline(never)]
    pub(crate) fn pass_up(&self, ctx: &AttemptCtx) {
        tell_enclosing(self.policy, ctx, true);
    }

    /// Tells the enclosing call's attempt (if any) what this call sent, so that it does not
    /// resend it unsafely by running its own body again, and reports what the call cost.
    #[inline]
    fn finish(&mut self, succeeded: bool, gave_up_retryable: bool) {
        self.ended = true;
        if self.nested {
            self.tell_outer(!succeeded, gave_up_retryable);
        }
        crate::report::record(|| (self.report(succeeded), self.ctx.depth));
    }

    /// What [`finish`](Self::finish) tells the enclosing call's attempt, out of line: the
    /// outermost call's end does not carry its frame.
    #[inline(never)]
    fn tell_outer(&self, failed: bool, gave_up_retryable: bool) {
        let (sent, unkeyed) = (self.sent, self.sent_unkeyed);
        let _ = with_attempt(|outer| {
            let same_key = under_the_same_key(outer, &self.ctx.key);
            if let Some(m) = sent {
                note_sent(outer, m, unkeyed, same_key);
            }
            // A request of its own that needs a key was carried out, or may have been (under
            // the enclosing call's own key, when it was given that key).
            if self.carried_out {
                let own = if same_key {
                    crate::context::CARRIED_OWN
                } else {
                    0
                };
                outer
                    .unsafe_carried
                    .set(outer.unsafe_carried.get() | crate::context::CARRIED | own);
            }
            // The server's `Retry-After` on the failure this call ends with: the enclosing
            // call, if it retries that failure, waits it out (and ends at once when it is
            // beyond its cap or its deadline), as for a response of its own.
            if failed && let Some(asked) = self.last.retry_after_for(self.ran_last.map(|r| r.0)) {
                // Marked as a nested call's only when no answer of the body's own is in it.
                let before = outer.retry_after.get();
                outer
                    .retry_after
                    .set(Some(before.map_or(asked, |a| a.max(asked))));
                outer
                    .retry_after_nested
                    .set(before.is_none() || outer.retry_after_nested.get());
            }
            if failed {
                outer.nested_ended(Some(
                    self.ran_last
                        .map_or((Class::Rejected, None), |r| (r.0, r.1)),
                ));
            }
            if gave_up_retryable {
                outer.nested_gave_up.set(true);
                if Instant::now() >= outer.until {
                    outer.nested_gave_up_at_end.set(true);
                }
                let token = self.token.get();
                if token != 0 {
                    outer.note_gave_up(token);
                }
            }
        });
    }

    #[cold]
    #[inline(never)]
    fn report(&self, succeeded: bool) -> CallReport {
        CallReport {
            function: self.shared.function,
            attempts: self.attempts,
            waited: self.waited,
            elapsed: self.started.elapsed(),
            succeeded,
        }
    }

    #[inline]
    pub(crate) fn succeeded(&mut self) {
        if let Some(c) = &mut self.concurrency {
            c.on_success();
        }
        crate::breaker::BreakerPermit::succeed_in(&mut self.breaker_permit);
        telemetry::call_succeeded(
            self.attempt_scope.take(),
            &self.span,
            self.shared,
            self.retried > 0,
            self.last.status.get(),
            self.started,
        );
        let m = self.shared.metrics;
        if self.retried == 0 {
            m.successful_without_retry.incr();
        } else {
            PolicyMetrics::incr(&m.successful_with_retry);
        }
        {
            let _e = self.span.enter();
            if self.retried == 0 {
                tracing::debug!(
                    attempt = self.attempts,
                    status = self.last.status.get(),
                    "attempt succeeded"
                );
            } else {
                // After a retry, at info: a log kept at info shows each failed attempt
                // ("retrying") and then how the call ended, not only the failures.
                tracing::info!(
                    attempt = self.attempts,
                    status = self.last.status.get(),
                    "attempt succeeded"
                );
            }
        }
        self.finish(true, false);
    }

    /// The attempt ran out of time: its own timeout, or the call's deadline (its limit was
    /// cut to the time left, or it ended when the call did).
    pub(crate) fn timed_out(&mut self, limit: Duration) -> Error {
        // Cut to less than a tenth of its timeout (a caller's `X-Timeout-Ms: 1`): too short to
        // say anything of the dependency. A limit cut to 3 s of 10 still does: a hung
        // dependency behind callers who pass their deadline on opens the breaker.
        self.last.cut_short = self.cut_short(limit);
        let kind = if limit < self.policy.timeout || Instant::now() >= self.deadline {
            ErrorKind::DeadlineExceeded
        } else {
            ErrorKind::AttemptTimeout
        };
        // Keyed, and nothing of the attempt's own under the key in flight or answered: the
        // timeout says nothing was carried out (`name_key`).
        self.runtime_error(kind, Class::Timeout)
    }

    /// Decides what follows a failed attempt, given the class the error itself reported
    /// (`None`: it said nothing; the recorded response then decides). Not `async`: after
    /// [`Next::Retry`] the next [`attempt`](Self::attempt) waits out the backoff before it
    /// starts, so the generated loop has one `await` per attempt.
    pub fn after_failure(&mut self, reported: Option<Class>) -> Next {
        self.last.nested_failure = self.failure_nested.take();
        let class = match self.last.runtime {
            Some(ErrorKind::CircuitOpen) => Class::Rejected,
            Some(_) => Class::Timeout,
            // The body's error said nothing the runtime can read: what it saw of the last
            // request, a failure before any response, or the status.
            None => reported
                .or(self.last.failure)
                .or_else(|| {
                    self.last
                        .status
                        .get()
                        .filter(|s| *s >= 400)
                        .map(Class::Status)
                })
                .unwrap_or(Class::Permanent),
        };
        // The policy's method (declared, or inferred from the body), when it is less safe than
        // every request the attempt was seen to send: it may have gone out unseen (a helper's
        // request, without `.resilient()`, so without the key). When the attempt was seen
        // sending nothing, whatever it sent went unseen: the least safe method. A connect
        // failure then proves only that the failing request was never sent, not that an
        // earlier one (a helper's POST) was not: the body does not run again.
        // So does an attempt in which a helper the body awaited, handed the client, was seen
        // sending nothing (its POST went unseen beside the body's own GET, say).
        // Unless every such request of the body is one the runtime sees (`sends_seen`): then
        // one it did not see was not sent (the body failed before its POST).
        let policy = self.policy;
        let unseen = if self.last.stamped {
            unseen_beside(
                policy,
                self.last.method,
                self.last.unseen_helper,
                self.last.unproven,
            )
        } else {
            Some(policy.method.least_safe(policy.unseen))
        };
        // Such a request that needs a key (a helper's POST, sent without `.resilient()`; its
        // helper not watched where the method is declared) may have been carried out as well:
        // no fallback answers in the call's place, as no retry sends it again. An attempt seen
        // sending nothing may have sent the policy's method so, unless every request of it is
        // one the runtime sees (`sends_seen`: the body failed before it). Not for a function
        // declared `idempotent`, which says so of everything it sends.
        // So does another type's send whose receiver showed no safe method (an SDK's
        // `send_email()`), whatever the attempt was seen sending. Before any early end of the
        // call below (the deadline run out): its fallback is decided on this too.
        let unseen_carried = if self.last.stamped {
            unseen.is_some_and(Method::needs_key)
        } else {
            !policy.sends_seen && policy.method.needs_key()
                || self.last.unproven & crate::context::UNPROVEN_UNSAFE != 0
        };
        if self.last.began && !says_all_may_go_again(policy) && unseen_carried {
            self.carried_out = true;
        }
        // An attempt that never began (refused by the breaker, or no time left) says nothing
        // of the dependency's latency; nor does one that timed out with less than a tenth of
        // its `timeout` (a caller's nearly spent `X-Timeout-Ms: 1`, an outer attempt ending):
        // it proves only that the dependency did not answer in the time it was given, and a
        // caller's header must not open a healthy dependency's breaker or lower its limit.
        if self.last.began {
            self.ran_last = Some((
                class,
                self.status_of(class),
                self.last.keyed_request_reached(),
                self.last_settled(),
            ));
            // A request of its own that needs a key may have been carried out, or a nested
            // call's (told when it ended), or a helper's sent unseen.
            if self.last.unsafe_carried || self.last.unseen_helper {
                self.carried_out = true;
            }
            // Its request under the call's key reached a server (so a connect failure after
            // it, another request's, leaves it carried out too).
            // Not when every request of it that needs a key was refused (a 4xx, then a
            // timeout on other work): answered, and not carried out.
            if self.last.key_may_be_carried(class) {
                self.key_carried = true;
            }
        }
        // Cut short, a timeout, or a dependency's prompt answer that it ran out of the time it
        // was handed (a 504 or 408 from a service honouring `X-Timeout-Ms`), says only that.
        // Not a timeout of the body's own (a client's `.timeout(…)` shorter than the cut limit
        // still saw the dependency hang for its whole length).
        let cut_short = self.last.cut_short
            && match class {
                Class::Timeout => self.last.runtime.is_some(),
                Class::Status(s) => s == 408 || s == 504,
                _ => false,
            };
        if let Some(c) = &mut self.concurrency {
            if self.last.began && !cut_short {
                c.on_failure(
                    class,
                    self.last.runtime == Some(ErrorKind::DeadlineExceeded),
                    self.last.status.get(),
                    self.last.answered_at,
                );
            } else {
                c.attempt_ended();
            }
        }
        if let (Some(mut p), Some(b)) = (self.breaker_permit.take(), self.shared.breaker) {
            // A hedged round ended on an earlier answer: judged slow or not to that answer.
            if let Some(at) = self.last.answered_at {
                p.judged_at(at);
            }
            // The next attempt marks its own permit, if a probe.
            if p.is_probe() {
                self.ctx
                    .held
                    .mark_probe(std::ptr::from_ref(b) as usize, false);
            }
            if class.trips_breaker() && !cut_short {
                b.on_failure(p);
            } else if p.is_probe()
                && !cut_short
                && class != Class::Rejected
                && self
                    .last
                    .status
                    .get()
                    .is_some_and(|s| s < 500 && !crate::classify::is_transient_status(s))
            {
                // A half-open probe the dependency answered (a 4xx, the function's own error
                // on what it read): up, though this call failed: a successful probe (else a
                // breaker whose traffic is mostly 404s would never close). Not a 429 or a 408,
                // nor a 5xx, even one a `Classify` of the user's took for permanent.
                b.on_success(p);
            } else {
                b.on_ignored(p);
            }
        }
        // How the last attempt that ran ended, for its span, its metric and the call's last
        // event: this one's (not the 409 of a sibling that the decision below may act on),
        // or, for a retry refused before it began (its breaker opened, no time left), the one
        // before it.
        let ran = match self.ran_last {
            Some((class, status, ..)) if !self.last.began && self.attempts > 0 => (class, status),
            _ => (class, self.status_of(class)),
        };
        // The deadline itself ran out: nothing more can be tried.
        if self.last.runtime == Some(ErrorKind::DeadlineExceeded) {
            return self.give_up(class, GiveUp::DeadlineTooClose, ran);
        }
        // A hedged round whose last attempt failed without an answer from the handler (a
        // timeout, a lost connection, a refused one, a proxy's 502 or 504: counted as such
        // above, for the breaker and the concurrency limit) after another was answered "still
        // in progress": the request is being processed, and the next attempt asks for its
        // replay. Not after the handler's own answer (a 500, 503, 429, 408: it is no longer in
        // progress, and a server that keeps no failure would run it again), nor after an
        // answer the server replayed from its store: those are final.
        let unanswered = class.unanswered(self.last.status.get());
        let class = match self.last.round_in_progress.take() {
            Some(retry_after) if unanswered && !self.last.replayed => {
                self.last.status = Status::of(Some(409));
                self.last.retry_after = Some(retry_after);
                self.last.retry_after_own = true;
                self.last.replayed = false;
                Class::Status(409)
            }
            _ => class,
        };
        // What the attempt sent, as far as the runtime saw; an attempt whose requests it did
        // not see at all counts as the policy's `unseen` method (generated code: the least
        // safe), so a POST sent behind the runtime's back is never resent unkeyed.
        let method = match self.last.method {
            Some(m) => policy.method.least_safe(m),
            None if !self.last.stamped => policy.method.least_safe(policy.unseen),
            None => policy.method,
        };
        // One layer retries: a failure a nested call already retried as far as its own policy
        // allowed is not retried again around it: the attempt ended at that failure, or the
        // body returned that call's error later (after requests of its own). Not when the
        // attempt's own timeout ended it: the body was still running, past the nested call's
        // failure (handled, `unwrap_or_default`), so the timeout is a failure of its own.
        let returned_inside = self.returned_inside.take();
        let own_timeout = self.last.runtime == Some(ErrorKind::AttemptTimeout);
        if ((self.last.nested_gave_up && !own_timeout) || returned_inside) && class.is_transient() {
            return self.give_up(class, GiveUp::RetriedInside, ran);
        }
        // A keyed call whose attempt did not stamp its request went out without the key.
        let keyed = self.ctx.key.is_some() && self.last.stamped && self.last.all_keyed;
        // The attempts that count against `max_attempts`: not those that only asked again
        // for the replay of a request still in progress, nor the hedges.
        let attempt = self.attempts;
        let counted = attempt - self.asks - self.hedges;
        // Past `max_attempts`, only asking again for a keyed request's replay (409 "still in
        // progress") goes on: it keeps its backoff too, whatever `Retry-After` says (a
        // `Retry-After: 0` would otherwise ask back to back until the deadline), one step
        // further at each ask, up to its `max` (a server that answers every request so, not
        // this crate's layer, would otherwise be asked at the first step until the deadline).
        let asking = self.ctx.key.is_some() && class == Class::Status(409);
        let backoff = if counted < policy.max_attempts || asking {
            let step = if asking {
                counted.saturating_add(self.asks)
            } else {
                counted
            };
            self.backoff
                .get_or_insert_with(|| BackoffState::new(policy.backoff))
                .next_delay(step)
        } else {
            Duration::ZERO
        };
        // A hedged round decided on an earlier answer: the `Retry-After` that answer carried
        // counts from it, what has passed since (a sibling that ran on) taken off; the time
        // left is measured now, and the backoff (spreading the retries) from now.
        let since = self
            .last
            .answered_at
            .map_or(Duration::ZERO, |at| at.elapsed());
        // And never sooner than `ASK_FLOOR`, whatever the backoff (a zero backoff with a
        // `Retry-After: 0` would ask back to back).
        let backoff = if asking {
            backoff.max(ASK_FLOOR)
        } else {
            backoff
        };
        let now = self.last.failed_at.unwrap_or_else(Instant::now);
        let facts = Facts {
            method,
            keyed,
            // Of a PUT or DELETE only: on a GET it says nothing of a nested PUT's resending.
            idempotent: says_all_may_go_again(policy),
            class,
            attempt: counted,
            max_attempts: policy.max_attempts,
            retry_on: &policy.retry_on,
            backoff,
            // A 409's own `Retry-After` or none: a sibling's (a 503's, joined over a hedged
            // round) does not make a plain conflict "still in progress", asked again.
            // Nor an earlier response's the body went on past, for a failure without a
            // response after it (a nested call's timeout after a 429 the body handled).
            retry_after: self
                .last
                .retry_after_for(Some(class))
                .filter(|_| {
                    class != Class::Status(409)
                        || (self.last.retry_after_own
                            || self.last.handled_for(Some(class)).is_some())
                            // A read's 409 is a plain conflict (`conflict_on_read`).
                            && !self.last.conflict_on_read
                })
                // Past `max_retry_after` as the server asked it, whatever has passed since; one
                // a later answer of the round gave counts from that answer: whole.
                .map(|ra| {
                    if ra > policy.max_retry_after
                        || self.last.answered_retry_after.is_none_or(|then| ra > then)
                    {
                        ra
                    } else {
                        ra.saturating_sub(since)
                    }
                }),
            max_retry_after: policy.max_retry_after,
            time_left: self.deadline.saturating_duration_since(now),
            timeout: policy.timeout.min(self.left_at_start),
            reached: self.last.reached,
            unseen,
            replayed: self.last.replayed,
        };
        match decide(&facts) {
            Decision::GiveUp(why) => self.give_up(class, why, ran),
            Decision::RetryAfter(delay) => {
                // Asking for a replay runs nothing again: not paid from the budget.
                let ask = crate::decision::in_progress(&facts);
                if let Some(budget) = self.shared.budget
                    && !ask
                {
                    // Kept until the retry begins: given back if it never does.
                    self.retry_token = budget.take_retry_at(class, now);
                    if self.retry_token.is_none() {
                        PolicyMetrics::incr(&self.shared.metrics.rejected_budget);
                        self.give_up(class, GiveUp::BudgetExhausted, ran);
                        let mut err = Error::new(ErrorKind::BudgetExhausted).with_attempts(attempt);
                        self.name_key(&mut err);
                        err.set_retry_after(self.last.retry_after_for(Some(class)));
                        let err = err
                            .with_class(Some(class), self.status_of(class))
                            .with_elapsed(self.started.elapsed());
                        return Next::Replace(err);
                    }
                }
                if ask {
                    self.asks += 1;
                } else {
                    // Counted when it begins (`begin_attempt`): it may never be made.
                    self.retry_pending = Some(class);
                }
                {
                    let _e = self.span.enter();
                    if ask {
                        tracing::info!(
                            attempt,
                            class = ran.0.as_str(),
                            status = ran.1,
                            delay_ms = delay.as_millis() as u64,
                            decision = "ask",
                            "still in progress; asking again for the replay"
                        );
                    } else {
                        tracing::info!(
                            attempt,
                            class = class.as_str(),
                            status = self.status_of(class),
                            delay_ms = delay.as_millis() as u64,
                            decision = "retry",
                            "attempt failed; retrying"
                        );
                    }
                }
                telemetry::attempt_retried(
                    self.attempt_scope.take(),
                    ask,
                    self.shared,
                    ran.0,
                    ran.1,
                    delay,
                );
                self.waited += delay;
                self.retry_at = Some(now + delay);
                Next::Retry
            }
        }
    }

    /// [`after_failure`](Self::after_failure) as the generated loop uses it: `true` when the
    /// body is to run again; a runtime error that replaces the attempt's own (the budget ran
    /// out) is converted and put in `result`. Generic over the output only: one copy for all
    /// the functions that return the same `Result`, and no conversion or `match` in each.
    pub fn failed<T, E: HoldsRuntimeErrors>(
        &mut self,
        reported: Option<Class>,
        result: &mut Result<T, E>,
    ) -> bool {
        // The call ended before this failure was decided on: refused at its start or by its
        // admission, the refusal returned by its first attempt (counted when refused).
        if self.ended {
            return false;
        }
        match self.after_failure(reported) {
            Next::Retry => true,
            Next::Return => false,
            Next::Replace(mut error) => {
                // Out of a nested call: its token (the enclosing call reads the error as that
                // call's, and writes its own key into its record, not onto it).
                if self.nested {
                    error.set_origin(crate::probe::token(self));
                    error.leaving();
                }
                self.replaced = Some(error.kind());
                *result = Err(E::from_runtime(error));
                false
            }
        }
    }

    fn give_up(&mut self, class: Class, why: GiveUp, ran: (Class, Option<u16>)) -> Next {
        telemetry::call_gave_up(
            self.attempt_scope.take(),
            &self.span,
            self.shared,
            self.retried > 0,
            ran.0,
            ran.1,
            why,
            self.last.runtime == Some(ErrorKind::CircuitOpen),
            self.started,
        );
        let m = self.shared.metrics;
        PolicyMetrics::incr(if self.retried == 0 {
            &m.failed_without_retry
        } else {
            &m.failed_with_retry
        });
        {
            let _e = self.span.enter();
            // The attempts and the key, whatever the error type carries of them (a
            // `reqwest::Error` returned inside a type of the user's own carries neither).
            // Its function and policy too: a log kept at warn leaves the call's span out.
            tracing::warn!(
                function = self.shared.function,
                policy = self.shared.policy,
                attempt = self.attempts,
                class = ran.0.as_str(),
                status = ran.1,
                decision = "give up",
                reason = why.as_str(),
                idempotency_key = self.ctx.named_key().map(tracing::field::display),
                "attempt failed; giving up"
            );
        }
        // A transient failure this call could have retried under its own policy: the
        // enclosing call must not retry it again. Not one the time ran out on before any
        // retry (nested, the enclosing attempt's time: its first attempt cut short, a backoff
        // or `Retry-After` that did not fit, no time even to start), nor a failure its policy
        // does not retry (a 503 outside its `retry_on`): nothing retried it, the enclosing
        // call's policy decides. Nor one whose `Retry-After` was beyond this call's cap before
        // any retry: it did not retry it, and the enclosing call waits it out under its own
        // cap or ends at once, as after a nested call of one attempt. (A spent budget does
        // stop the enclosing call's retry: the budget is there to stop retries of a failing
        // dependency, and a retry around the call would go past it.)
        // (A call that hedged sent more than one request: not run again around it either,
        // whether it then ran out of time or met a `Retry-After` beyond its cap.)
        let not_retried = self.retried == 0
            && self.hedges == 0
            && matches!(why, GiveUp::DeadlineTooClose | GiveUp::RetryAfterTooLong);
        let retryable = class.is_transient()
            && self.policy.max_attempts > 1
            && !not_retried
            && why != GiveUp::NotInRetryOn;
        self.finish(false, retryable);
        Next::Return
    }
}

/// A call dropped before it ended was cancelled by its caller (its own timeout, a `select!`
/// that took another branch, a dropped task): counted and traced as such, so that calls given
/// up on upstream do not vanish from the metrics. What it was doing is already torn down: the
/// generated code drops the attempt (and the body, in its context) before the session.
impl Drop for Session {
    #[inline]
    fn drop(&mut self) {
        if !self.ended {
            if std::thread::panicking() {
                self.panicked();
            } else {
                self.cancelled();
            }
        }
        self.release_slot();
        if self.ctx.call != 0 {
            crate::context::call_left(self.ctx.call);
        }
    }
}

impl Session {
    /// Gives the bulkhead slot back, if held; the gauge is set after, from the bulkhead itself.
    #[inline]
    fn release_slot(&mut self) {
        if self._bulkhead.take().is_some() {
            telemetry::bulkhead_moved(self.shared);
        }
    }

    /// Dropped while a panic unwinds it (the body's, or its caller's): a failed call, not one
    /// its caller stopped waiting for.
    #[cold]
    #[inline(never)]
    fn panicked(&mut self) {
        self.ended = true;
        if self.nested && !self.admitted {
            tell_waiting(false);
        }
        // The body's own failure, for an adaptive limit, as the same body returning an error
        // at that moment would be: its latency counts where a request of the attempt was
        // answered; not the slowness of a body that waited on something else and then
        // panicked (the permit's drop would take the attempt in flight for an overload). (A
        // caller's own panic unwinding the call while a slow request is out reads the same:
        // rare, and erring toward leaving the limit.)
        if let Some(c) = &mut self.concurrency
            && c.running()
        {
            c.on_failure(Class::Permanent, false, self.ctx.status.get(), None);
        }
        self.give_back_retry();
        let m = self.shared.metrics;
        let retried = self.retried > 0;
        PolicyMetrics::incr(if retried {
            &m.failed_with_retry
        } else {
            &m.failed_without_retry
        });
        telemetry::call_panicked(
            self.attempt_scope.take(),
            &self.span,
            self.shared,
            retried,
            self.ctx.status.get(),
            self.started,
        );
        let _e = self.span.enter();
        tracing::error!(
            function = self.shared.function,
            attempt = self.attempts,
            "call failed: a panic unwound it"
        );
    }

    #[cold]
    #[inline(never)]
    fn cancelled(&mut self) {
        self.ended = true;
        // Dropped while it waited for its slot or permit: it sent nothing.
        if self.nested && !self.admitted {
            tell_waiting(false);
        }
        // Given up on inside another call's attempt: all this call may have sent, the attempt
        // cut short included (its body is dropped by now, in its context), goes to that
        // attempt, as its end would have told it.
        if self.nested {
            self.keep_sent(None);
            self.tell_outer(false, false);
        }
        self.give_back_retry();
        // Ended too, for `measure`: failed, with the attempts it began (not the report of a
        // call nested in it that finished before it was dropped).
        crate::report::record_cancelled(|| (self.report(false), self.ctx.depth));
        PolicyMetrics::incr(&self.shared.metrics.cancelled);
        // Dropped while it waited for its slot or permit: its span, opened only once admitted,
        // is opened for the event, so that it is told in the call's span as every other is
        // (its outcome recorded on it too). Only the span: the call was not opened (no budget
        // deposit, no bulkhead change).
        if !self.admitted && self.span.is_none() {
            let ctx = &self.ctx;
            self.span = call_span(
                self.shared,
                self.policy,
                ctx.request_id_cell(),
                ctx.request_id_text.as_deref(),
                ctx.depth,
            );
        }
        telemetry::call_cancelled(
            self.attempt_scope.take(),
            &self.span,
            self.shared,
            self.ctx.status.get(),
            self.started,
        );
        let _e = self.span.enter();
        tracing::info!(
            function = self.shared.function,
            attempt = self.attempts,
            "call cancelled: its caller stopped waiting"
        );
    }
}
