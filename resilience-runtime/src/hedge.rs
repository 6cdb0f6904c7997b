//! Hedging: after `delay` without an answer, another attempt alongside the first; the first
//! success wins and the others are dropped (their connections closed). At most `max` hedges
//! per attempt, each one drawn from the retry budget: when the budget is spent, no hedge.
//!
//! The macro allows hedging only where a duplicate is harmless (safe methods, PUT/DELETE
//! declared `idempotent`, keyed requests: the server half answers a concurrent duplicate with
//! 409). Each hedge runs a fresh future of the body (by-value arguments cloned for it) under
//! its own attempt context: its own attempt number and span id, the call's request id, trace
//! and idempotency key. Hedges share the first attempt's breaker permit: the breaker sees one
//! outcome per round, not one per request.
//!
//! Nothing is allocated until a hedge fires: the first attempt lives on the caller's stack,
//! hedges in a `Vec` made on the first hedge.

use std::future::Future;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tracing::Instrument as _;

use crate::__private::HoldsRuntimeErrors;
use crate::context::{AttemptCtx, Scoped};
use crate::counters::PolicyMetrics;
use crate::registry::Resolved;
use crate::session::Session;
use crate::telemetry::{self, AttemptScope};

/// The hedging settings of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hedge {
    /// How long an attempt runs without an answer before the next hedge starts.
    pub delay: Duration,
    /// Hedges at most per attempt, 1..=3.
    pub max: u32,
}

pin_project_lite::pin_project! {
    /// One attempt in flight: the body under its context, and its time limit.
    struct Running<F: Future> {
        #[pin]
        body: Scoped<F>,
        // The attempt's time limit: a timer made at its first `Pending` (an attempt that
        // answers on its first poll registers none).
        #[pin]
        timer: Option<Sleep>,
        until: Instant,
        limit: Duration,
        done: bool,
        // Counted in the hedge metric (a hedge ends once, won or lost).
        counted: bool,
        // A hedge's function (none for the first attempt): a hedge dropped in flight (the
        // caller stopped waiting) is counted lost.
        hedge_of: Option<&'static Resolved>,
        // The attempt's span (and start, for its metrics); its body is polled in it.
        scope: Option<AttemptScope>,
        // The call's policy: what the attempt may have sent, told to an enclosing attempt
        // when it is dropped in flight.
        policy: &'static crate::policy::Policy,
    }

    impl<F: Future> PinnedDrop for Running<F> {
        fn drop(this: Pin<&mut Self>) {
            // Still in flight when the call is dropped (its caller stopped waiting): every
            // attempt that ended otherwise gave its span and its count away already.
            let mut me = this.project();
            // Given up on in flight inside another call's attempt (the current one, if any):
            // its body dropped first (its own nested calls tell this context as they go), all
            // it may have sent goes to that attempt.
            if !*me.done {
                // In its span, as an attempt that is not hedged is dropped (`attempt.rs`):
                // what the body logs while it unwinds is the attempt's.
                let _entered = me.scope.as_ref().and_then(AttemptScope::enter);
                me.body.as_mut().stop();
                let ctx = me.body.as_mut().ctx();
                crate::session::tell_enclosing(me.policy, ctx, false);
            }
            if let Some(scope) = me.scope.take() {
                telemetry::attempt_cancelled(scope, me.body.ctx().status.get());
            }
            if let Some(shared) = *me.hedge_of
                && !*me.counted
            {
                *me.counted = true;
                telemetry::hedge_ended(shared, false);
            }
        }
    }
}

enum Outcome<T, E> {
    Done(Result<T, E>),
    TimedOut(Duration),
}

impl<F: Future> Running<F> {
    fn new(
        s: &Session,
        ctx: (Instant, Duration, AttemptCtx),
        scope: Option<AttemptScope>,
        hedge_of: Option<&'static Resolved>,
        body: F,
    ) -> Running<F> {
        let (until, limit, ctx) = ctx;
        Running {
            body: Scoped::new(ctx, body),
            timer: None,
            until,
            limit,
            done: false,
            counted: false,
            hedge_of,
            scope,
            policy: s.policy,
        }
    }
}

impl<T, E, F: Future<Output = Result<T, E>>> Running<F> {
    fn poll_outcome(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome<T, E>> {
        let mut me = self.project();
        if *me.done {
            return Poll::Pending;
        }
        let polled = {
            let _entered = me.scope.as_ref().and_then(AttemptScope::enter);
            me.body.as_mut().poll(cx)
        };
        if let Poll::Ready(r) = polled {
            *me.done = true;
            // A failure once the attempt's time is up is its timeout, unless a nested call
            // that could retry gave up in that same instant (see `attempt.rs`).
            if r.is_err()
                && Instant::now() >= *me.until
                && !me.body.as_mut().ctx().nested_gave_up_at_end.get()
            {
                return Poll::Ready(Outcome::TimedOut(*me.limit));
            }
            return Poll::Ready(Outcome::Done(r));
        }
        if me.timer.as_mut().as_pin_mut().is_none() {
            me.timer.set(Some(tokio::time::sleep_until(*me.until)));
        }
        // Outside the task's cooperative budget, as `tokio::time::timeout` polls its timer: a
        // body that spends the budget on every poll would otherwise never see it fire.
        if me.timer.as_pin_mut().is_some_and(|t| {
            pin!(tokio::task::coop::unconstrained(t))
                .poll(cx)
                .is_ready()
        }) {
            *me.done = true;
            // Dropped now, as an attempt that is not hedged is at its timeout: its request
            // and connection go, not held until the round ends.
            let _entered = me.scope.as_ref().and_then(AttemptScope::enter);
            me.body.stop();
            return Poll::Ready(Outcome::TimedOut(*me.limit));
        }
        Poll::Pending
    }
}

impl<F: Future> Running<F> {
    fn ctx(self: Pin<&mut Self>) -> &AttemptCtx {
        self.project().body.ctx()
    }

    fn take_scope(self: Pin<&mut Self>) -> Option<AttemptScope> {
        self.project().scope.take()
    }

    /// When the attempt started (`until - limit`: no clock read).
    fn started(&self) -> Instant {
        self.until - self.limit
    }

    /// Still running: neither answered, nor timed out, nor stopped.
    fn in_flight(&self) -> bool {
        !self.done
    }

    /// Stops the attempt: its body is dropped (in its context), its context kept.
    fn stop(self: Pin<&mut Self>) {
        let me = self.project();
        *me.done = true;
        let _entered = me.scope.as_ref().and_then(AttemptScope::enter);
        me.body.stop();
    }
}

/// Hedge `i` (0 is the first attempt, not a hedge) ended, won or lost: counted once.
fn hedge_ended<F: Future>(s: &Session, i: usize, r: Pin<&mut Running<F>>, won: bool) {
    let counted = r.project().counted;
    if i != 0 && !*counted {
        *counted = true;
        telemetry::hedge_ended(s.shared, won);
    }
}

/// Runs one attempt of the body with hedges (the policy has `hedge`), or without.
pub(crate) async fn run<T, E, M, F>(s: &mut Session, mut make: M) -> Result<T, E>
where
    M: FnMut() -> F,
    F: Future<Output = Result<T, E>>,
    E: HoldsRuntimeErrors,
{
    let Some(hedge) = s.policy.hedge else {
        return s.attempt(std::pin::pin!(Some(make()))).await;
    };
    // The backoff after the previous attempt, as `Session::attempt` waits it out.
    if let Some(at) = s.retry_at.take() {
        tokio::time::sleep_until(at).await;
    }
    // An ask for the replay of the call's request still in progress (after a 409; every
    // attempt after the first that is not a retry) runs nothing again: no hedge beside it,
    // drawn from the retry budget, as no ask is.
    let asking = s.asking_next();
    let ctx = match s.begin_attempt() {
        Ok((until, limit)) => (until, limit, s.attempt_ctx(until)),
        Err(e) => return Err(E::from_runtime(e)),
    };
    let span = s.span.clone();
    // Each attempt keeps its own span; the one whose outcome the call acts on goes back to
    // the session.
    let scope = s.attempt_scope.take();
    // `until - limit`: when the first attempt started (no clock read for the hedge timer).
    let first_hedge_at = ctx.0 - ctx.1 + hedge.delay;
    let mut first = pin!(Running::new(s, ctx, scope, None, make()));
    let mut hedges: Vec<Pin<Box<Running<F>>>> = Vec::new();
    // The hedge timer, made when the first attempt is first pending.
    let mut timer: Pin<&mut Option<Sleep>> = pin!(None);
    let mut hedging = !asking;
    let mut in_flight = 1u32;
    // What the attempts of this round that ended without the call's answer sent, joined.
    let mut round = None;
    // An attempt of the round answered "still in progress" (a keyed request's 409 with
    // `Retry-After`, from the server half while another attempt's request runs): its
    // `Retry-After`, for the decision after the round if the last attempt timed out.
    let mut in_progress: Option<Duration> = None;
    // The handler itself answered an attempt of the round (its 500, its 404: not the server's
    // "still in progress"): the request is no longer in progress, whatever an attempt read
    // before that answer or reads after it (a 409 the server gave a sibling while the handler
    // ran, read once the handler's answer is in). Asking for "the replay" then would run the
    // handler again: a server that keeps no failure released the key.
    let mut handler_answered_round = false;
    // An attempt of the round timed out with at least a tenth of `timeout` (not cut short).
    let mut timed_out_whole = false;
    // The first failure of the round the handler answered (its status, or the body's own
    // error on what it read) while another attempt still ran, with what its requests
    // recorded: the round's outcome if the attempts after it end without an answer (a hedge
    // that hangs to its timeout says nothing that overrides the handler's 500 or 404).
    // With when that attempt started: its latency is judged from there.
    #[allow(clippy::type_complexity)]
    let mut answered: Option<(
        Result<T, E>,
        crate::session::Answered,
        Option<Instant>,
        telemetry::KeptAnswer,
    )> = None;
    let run = std::future::poll_fn(|cx| {
        loop {
            // The first attempt that finishes, if any: (0 = the first attempt, i = hedge i).
            // One polled that now has sent what may not go out twice (a nested call's POST,
            // under a key of its own) goes on alone: the others stop before their next poll,
            // so that they do not send it too.
            let mut ready = None;
            let mut alone = None;
            for i in 0..=hedges.len() {
                let mut a = match i {
                    0 => first.as_mut(),
                    i => hedges[i - 1].as_mut(),
                };
                if let Poll::Ready(o) = a.as_mut().poll_outcome(cx) {
                    ready = Some((i, o));
                    break;
                }
                if s.nested {
                    s.pass_up(a.as_mut().ctx());
                }
                // Seen to send it: an attempt not yet seen sending anything (a hedge that has
                // not reached its request) is not taken for one.
                if in_flight > 1 && a.in_flight() && {
                    let ctx = a.as_mut().ctx();
                    ctx.stamped.get() && !s.may_duplicate(ctx)
                } {
                    alone = Some(i);
                    break;
                }
            }
            if let Some(k) = alone {
                for j in (0..=hedges.len()).filter(|j| *j != k) {
                    let mut b = match j {
                        0 => first.as_mut(),
                        j => hedges[j - 1].as_mut(),
                    };
                    if !b.in_flight() {
                        continue;
                    }
                    b.as_mut().stop();
                    in_flight -= 1;
                    // Stopped in flight: its request, if it went, may have been carried out.
                    s.record_in_round(
                        b.as_mut().ctx(),
                        &mut round,
                        Some(crate::classify::Class::Timeout),
                    );
                    let status = b.as_mut().ctx().status.get();
                    let scope = b.as_mut().take_scope();
                    telemetry::attempt_stopped(scope, status);
                    hedge_ended(s, j, b, false);
                }
                tracing::debug!(
                    attempt = s.attempts,
                    "an attempt sent what may not go out twice: the others stop"
                );
                hedging = false;
                continue;
            }
            if let Some((i, o)) = ready {
                in_flight -= 1;
                // An `Ok` of a body that does not check the status, while another attempt of
                // the round runs on: if it is the server's "still in progress" (409) for the
                // call's key, that other attempt's request is the one being carried out, and
                // its answer is the call's. This one is set aside, not the winner.
                // Or, the last of the round, after the handler's own answer to another: a
                // stale "still in progress", which does not end the round as its success.
                let stale_last = in_flight == 0 && handler_answered_round && answered.is_some();
                if (in_flight > 0 || stale_last) && matches!(o, Outcome::Done(Ok(_))) {
                    let mut ended = match i {
                        0 => first.as_mut(),
                        i => hedges[i - 1].as_mut(),
                    };
                    if let Some(after) = s.in_progress_of(ended.as_mut().ctx()) {
                        drop(o);
                        if !handler_answered_round {
                            in_progress.get_or_insert(after);
                        }
                        s.record_in_round(
                            ended.as_mut().ctx(),
                            &mut round,
                            Some(crate::classify::Class::Status(409)),
                        );
                        let scope = ended.as_mut().take_scope();
                        hedge_ended(s, i, ended, false);
                        let stale = Some(crate::classify::Class::Status(409));
                        if stale_last {
                            telemetry::attempt_overruled(scope, stale, Some(409));
                        } else {
                            telemetry::attempt_failed_in_round(scope, stale, Some(409));
                        }
                        hedging = false;
                        // Taken only when the round ends on it (attempts still running may
                        // end with an answer of their own, or on it later).
                        if stale_last && let Some((earlier, what, started, kept)) = answered.take()
                        {
                            what.restore(&mut s.last);
                            return round_ended(s, earlier, kept.acted_on(), started, None);
                        }
                        continue;
                    }
                }
                let r = match o {
                    Outcome::Done(Ok(v)) => {
                        // The others lose: what they sent is recorded, then they are dropped;
                        // the winner last, so that its response is what the call keeps.
                        if i != 0 {
                            s.record_attempt(first.as_mut().ctx());
                            let status = first.as_mut().ctx().status.get();
                            let scope = first.as_mut().take_scope();
                            telemetry::attempt_superseded(scope, status);
                        }
                        for (j, h) in hedges.iter_mut().enumerate() {
                            if j + 1 != i {
                                s.record_attempt(h.as_mut().ctx());
                                let status = h.as_mut().ctx().status.get();
                                let scope = h.as_mut().take_scope();
                                telemetry::attempt_superseded(scope, status);
                                hedge_ended(s, j + 1, h.as_mut(), false);
                            }
                        }
                        let mut winner = match i {
                            0 => first.as_mut(),
                            i => hedges[i - 1].as_mut(),
                        };
                        hedge_ended(s, i, winner.as_mut(), true);
                        s.record_attempt(winner.as_mut().ctx());
                        // An adaptive limit and a breaker watching slowness judge the
                        // answer's latency from the start of the attempt that gave it, not
                        // from the round's.
                        if i != 0 {
                            s.answer_started(winner.started());
                        }
                        s.attempt_scope = winner.take_scope();
                        hedges.clear();
                        s.succeeded();
                        return Poll::Ready(Ok(v));
                    }
                    o => {
                        let mut ended = match i {
                            0 => first.as_mut(),
                            i => hedges[i - 1].as_mut(),
                        };
                        // How this attempt failed, for its span when another still runs: a
                        // failure of its request, else its status, else a nested call's failure
                        // the body returned (its responses are that call's, not this attempt's),
                        // else its body's own error (a permanent failure, as after any attempt
                        // whose error says nothing the runtime can read).
                        let (class, nested_status) = match &o {
                            Outcome::TimedOut(_) => (Some(crate::classify::Class::Timeout), None),
                            Outcome::Done(_) => {
                                let ctx = ended.as_mut().ctx();
                                let own = ctx.failure.get().or_else(|| {
                                    ctx.status
                                        .get()
                                        .filter(|s| *s >= 400)
                                        .map(crate::classify::Class::Status)
                                });
                                // Only where the attempt had no answer of its own: a nested
                                // failure after it (a 201, then a nested refusal) leaves that
                                // answer the attempt's.
                                let nested = ctx
                                    .nested_failure
                                    .get()
                                    .filter(|_| own.is_none() && ctx.status.get().is_none());
                                (
                                    Some(
                                        own.or(nested).unwrap_or(crate::classify::Class::Permanent),
                                    ),
                                    nested.and(ctx.nested_status.get()),
                                )
                            }
                        };
                        // Read from this attempt's own requests, before the round's are joined.
                        let own_in_progress = s.in_progress_of(ended.as_mut().ctx());
                        if in_progress.is_none() && !handler_answered_round {
                            in_progress = own_in_progress;
                        }
                        s.record_in_round(ended.as_mut().ctx(), &mut round, class);
                        let scope = ended.as_mut().take_scope();
                        let ended_started = ended.started();
                        hedge_ended(s, i, ended, false);
                        let r = match o {
                            Outcome::Done(r) => {
                                s.last.runtime = None;
                                r
                            }
                            Outcome::TimedOut(limit) => {
                                // Cut short only if every attempt of the round that timed out
                                // was: a hedge begun with under a tenth of `timeout` (a call
                                // handed less than its `timeout`), the last to end, hid the
                                // first attempt's full timeout from the breaker.
                                let e = s.timed_out(limit);
                                timed_out_whole |= !s.last.cut_short;
                                s.last.cut_short = !timed_out_whole;
                                Err(E::from_runtime(e))
                            }
                        };
                        (
                            r,
                            scope,
                            class,
                            (i != 0).then_some(ended_started),
                            own_in_progress.is_some(),
                            nested_status,
                            ended_started,
                        )
                    }
                };
                let (r, scope, class, hedge_started, own_in_progress, nested_status, ended_started) =
                    r;
                let handler_answered =
                    !class.is_some_and(|c| c.unanswered(nested_status.or(s.last.status.get())));
                if handler_answered && !own_in_progress {
                    handler_answered_round = true;
                    in_progress = None;
                }
                if in_flight > 0 {
                    // An answer came (a failure with the handler's status, or the body's own
                    // error on what it read): no more hedges. The round waits for the attempts
                    // still running, then the retry decision acts on it (`retry_on`, the key,
                    // `Retry-After`): a hedge started now would resend what the handler already
                    // answered (a 500 a server that keeps no failure released runs the handler
                    // again). A failure without the handler's answer (a timeout, a lost or
                    // refused connection, a proxy's 502 or 504) leaves the hedging as it was.
                    // A stale "still in progress" (read after the handler's own answer) does
                    // not take that answer's place.
                    if handler_answered && !(own_in_progress && handler_answered_round) {
                        hedging = false;
                        // Kept as the round's outcome, in place of an earlier answer (the last
                        // answer decides), unless a later attempt ends with one of its own;
                        // not used when an attempt was told "still in progress" (the attempt
                        // doing the work decides: asked again after it). Its span stays open
                        // for the call's decision, its metrics measured to its own end.
                        let status = s.last.status.get();
                        // The attempt's own start, the first's too: should the round end on
                        // this answer after the others, its latency is this attempt's.
                        answered = Some((
                            r,
                            crate::session::Answered::of(&s.last),
                            Some(ended_started),
                            telemetry::KeptAnswer::new(scope, class, status),
                        ));
                    } else {
                        telemetry::attempt_failed_in_round(scope, class, s.last.status.get());
                    }
                    continue;
                }
                // The last attempt ended without the handler's answer, after another was
                // answered: the round ends on that answer, and so do its metrics (the answered
                // attempt counted, with its own duration and class, not this one's timeout).
                let (r, hedge_started, scope) = match answered.take() {
                    // Or with a stale "still in progress" after the handler's own answer.
                    Some((earlier, what, started, kept))
                        if (!handler_answered || own_in_progress) && in_progress.is_none() =>
                    {
                        telemetry::attempt_overruled(scope, class, s.last.status.get());
                        what.restore(&mut s.last);
                        (earlier, started, kept.acted_on())
                    }
                    _ => (r, hedge_started, scope),
                };
                // The last one left: the call acts on it (the retry loop decides, as after any
                // attempt). If it timed out after another was told "still in progress" (the
                // handler ran on), the decision asks for the replay (`Session::after_failure`).
                return round_ended(s, r, scope, hedge_started, in_progress);
            }
            if !hedging {
                return Poll::Pending;
            }
            if timer.as_mut().as_pin_mut().is_none() {
                timer.set(Some(tokio::time::sleep_until(first_hedge_at)));
            }
            if timer.as_mut().as_pin_mut().is_some_and(|t| {
                pin!(tokio::task::coop::unconstrained(t))
                    .poll(cx)
                    .is_pending()
            }) {
                return Poll::Pending;
            }
            // What the attempts in flight sent, or may be sending unseen, must be harmless to
            // send once more: the compile-time check saw only the body's own tokens, not a
            // nested call's POST (a new automatic key when the body runs again) or a helper's.
            let harmless = s.may_duplicate(first.as_mut().ctx())
                && hedges.iter_mut().all(|h| s.may_duplicate(h.as_mut().ctx()));
            if !harmless {
                // An attempt that has sent nothing the runtime saw yet is judged again at the
                // round's next poll, which follows its own (its request is stamped while it is
                // polled): no hedge while it sends unseen, one once its request is seen to be
                // harmless.
                let maybe = |ctx: &AttemptCtx| s.may_duplicate(ctx) || s.may_duplicate_later(ctx);
                let later = maybe(first.as_mut().ctx())
                    && hedges.iter_mut().all(|h| maybe(h.as_mut().ctx()));
                if !later {
                    tracing::debug!(
                        attempt = s.attempts,
                        "no hedge: the attempt in flight sent what may not be sent twice"
                    );
                    hedging = false;
                }
                return Poll::Pending;
            }
            match begin_hedge(s) {
                Some(ctx) => {
                    // An attempt of the round in flight may have carried out a request under a
                    // key (a nested call's POST, given the call's key): the hedge's nested
                    // calls given that key are told so, as after an earlier round, and their
                    // fallbacks do not answer in its place.
                    if first.as_mut().ctx().carried_any()
                        || hedges.iter_mut().any(|h| h.as_mut().ctx().carried_any())
                    {
                        ctx.2.mark_carried_before();
                    }
                    // `until - limit`: the instant the hedge starts.
                    let scope = AttemptScope::start(&s.span, s.policy, s.attempts, ctx.0 - ctx.1);
                    hedges.push(Box::pin(Running::new(
                        s,
                        ctx,
                        scope,
                        Some(s.shared),
                        make(),
                    )));
                    in_flight += 1;
                    hedging = hedges.len() < hedge.max as usize;
                    if let Some(t) = timer.as_mut().as_pin_mut() {
                        t.reset(Instant::now() + hedge.delay);
                    }
                }
                None => hedging = false,
            }
        }
    });
    // With tracing off, no `Instrumented` wrapper entered and left on every poll.
    if span.is_disabled() {
        run.await
    } else {
        run.instrument(span).await
    }
}

/// The round ends on `r`, the outcome of the attempt of `scope` (its span, for the call's
/// decision), started at `started` if a hedge or an earlier answer (whose latency is judged to
/// its answer: `Last::answered_at`); `in_progress`: the `Retry-After` of a "still in
/// progress" answer in the round, for the decision after a failure.
fn round_ended<T, E>(
    s: &mut Session,
    r: Result<T, E>,
    scope: Option<AttemptScope>,
    started: Option<Instant>,
    in_progress: Option<Duration>,
) -> Poll<Result<T, E>> {
    s.attempt_scope = scope;
    s.last.round_in_progress = in_progress.filter(|_| r.is_err());
    // Ended by a hedge: its latency is judged from its own start, as a hedge's success is (a
    // 404 it got in 80 ms is no slow call for its round's 180).
    if let Some(started) = started {
        s.answer_started(started);
    }
    Poll::Ready(r)
}

/// A hedge's attempt context, or `None` when no hedge may start: the deadline is too close,
/// the breaker is no longer closed (opened by other calls since this one started, or
/// half-open, whose probes are counted), or the retry budget is spent.
fn begin_hedge(s: &mut Session) -> Option<(Instant, Duration, AttemptCtx)> {
    let now = Instant::now();
    let left = s.deadline.saturating_duration_since(now);
    // As for a retry: not with less than a tenth of the attempt's time left (it could only
    // time out, a request sent in vain, and cut that short it says nothing to the breaker).
    if left.is_zero() || s.too_little_left(left) {
        return None;
    }
    if let Some(b) = s.shared.breaker
        && !b.is_closed()
    {
        tracing::debug!(
            attempt = s.attempts,
            breaker = b.name(),
            "breaker not closed: no hedge"
        );
        return None;
    }
    if let Some(b) = s.shared.budget
        && !b.withdraw_at(now)
    {
        PolicyMetrics::incr(&s.shared.metrics.rejected_budget);
        tracing::debug!(attempt = s.attempts, "retry budget spent: no hedge");
        return None;
    }
    // An attempt, not a retry: no failure is retried (`resilience.client.hedges` counts it),
    // and `max_attempts` bounds the retries, not the hedges.
    s.attempts += 1;
    s.hedges += 1;
    tracing::info!(attempt = s.attempts, "no answer yet: hedging");
    let limit = s.policy.timeout.min(left);
    let until = now + limit;
    Some((until, limit, s.attempt_ctx(until)))
}
