//! One attempt of a call's body, as a future written out by hand: the backoff before it (after a
//! failed attempt), then the body polled with the session's own attempt context, under the
//! attempt's time limit.
//!
//! What an `async fn` around `sleep_until(backoff)` and `tokio::time::timeout_at(until,
//! Scoped::new(ctx, body))` did, in one small state machine: the context is not built and moved
//! into the future (it lives in the session, filled in place), one timer serves the backoff and
//! then the attempt's limit, the limit's timer is armed only when the body first waits (a body
//! that answers at once never touches the timer wheel, as `tokio::time::Timeout` never
//! registers its timer then either; what is saved is building it), and a body cut short is
//! dropped in its attempt's context (one that finished holds nothing more: it stays in its
//! slot, never polled again). What is compiled per annotated function is small: the poll and
//! drop of the body in its slot ([`Body`]) and a forwarding poll; everything before
//! and after the body (the backoff, the breaker, the bookkeeping, the timer) is the
//! non-generic [`Core`]'s, compiled once.

use std::future::Future;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::__private::HoldsRuntimeErrors;
use crate::context::{in_attempt, poll_in_attempt};
use crate::error::Error;
use crate::session::Session;
use crate::telemetry;

pin_project_lite::pin_project! {
    /// What an attempt holds that does not depend on its body: compiled once, not once per
    /// annotated function.
    pub(crate) struct Core<'s> {
        session: &'s mut Session,
        // The backoff after the previous attempt: the attempt starts once it has passed.
        backoff_until: Option<Instant>,
        // When the attempt ends (its timeout or the call's deadline) and how long it may run;
        // set when it starts, at its first poll after the backoff.
        until: Instant,
        limit: Duration,
        started: bool,
        // The body answered, or was dropped.
        ended: bool,
        // The span the body runs in, entered around each poll (none with tracing off).
        span: Option<tracing::Span>,
        // The backoff's timer, then the attempt's, armed when the body first waits.
        #[pin]
        timer: Option<Sleep>,
    }
}

/// What the body did when asked (see [`Core::step`]).
pub(crate) enum Polled {
    Pending,
    /// It answered `Ok`.
    Ok,
    /// It answered `Err`.
    Err,
    /// No body: it was dropped when asked to be.
    Gone,
}

/// What the attempt did in one poll.
enum Step {
    Pending,
    /// The body answered; its output is where the body's poll put it.
    Done,
    /// The attempt could not start, or ran out of time: its error.
    Failed(Error),
}

impl<'s> Core<'s> {
    pub(crate) fn new(session: &'s mut Session) -> Core<'s> {
        let until = session.deadline;
        let backoff_until = session.retry_at.take();
        Core {
            session,
            backoff_until,
            until,
            limit: Duration::ZERO,
            started: false,
            ended: false,
            span: None,
            timer: None,
        }
    }

    /// One poll of the attempt, everything but the body itself, which is polled (and dropped
    /// when it answers, or when its time is up) through `body`.
    ///
    /// The first polls wait out the backoff, if any; then the attempt starts (the breaker's
    /// permit, the time limit, the span). The body is polled in the attempt's span, with the
    /// attempt's context current. After it returns `Pending` the timer is armed (the first
    /// time) and checked, even when the body used up the task's budget (what
    /// `tokio::time::Timeout` does for its timer); when the time is up the body is dropped, in
    /// its context.
    fn step(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        body: &mut dyn FnMut(Option<&mut Context<'_>>) -> Polled,
    ) -> Step {
        let mut this = self.project();
        // Polled again after it answered (or was dropped): its body is not polled again.
        if *this.ended {
            return Step::Pending;
        }
        if !*this.started {
            if let Some(at) = *this.backoff_until {
                if this.timer.is_none() {
                    this.timer.set(Some(tokio::time::sleep_until(at)));
                }
                if let Some(timer) = this.timer.as_mut().as_pin_mut()
                    && timer.poll(cx).is_pending()
                {
                    return Step::Pending;
                }
                *this.backoff_until = None;
                this.timer.set(None);
            }
            *this.started = true;
            match this.session.begin_attempt() {
                Ok((until, limit)) => (*this.until, *this.limit) = (until, limit),
                Err(e) => {
                    // Refused before it started: the body never ran, and is dropped unpolled.
                    *this.ended = true;
                    body(None);
                    return Step::Failed(e);
                }
            }
            let session = &**this.session;
            // Written only when there is one (the span is `None` until then): copying a `None`
            // out of the call's result stalled on the store of its tag alone.
            if let Some(span) = telemetry::body_span(session.attempt_scope.as_ref(), &session.span)
            {
                *this.span = Some(span);
            }
        }
        let _entered = this.span.as_ref().map(tracing::Span::enter);
        match poll_in_attempt(&this.session.ctx, body, cx) {
            Polled::Ok => {
                *this.ended = true;
                this.session.record_own_success();
                this.session.succeeded();
                return Step::Done;
            }
            Polled::Err => {
                *this.ended = true;
                this.session.record_own();
                // A failure once the attempt's time is up (a nested call that ran out of this
                // attempt's time ends in the same instant as this attempt's timer) is this
                // attempt's timeout; but not when a nested call that could retry on its own
                // gave up in that same instant (it retried, then this attempt's end cut its
                // last attempt): that is the nested call's failure, which this call does not
                // run again around it (retries would multiply).
                let now = Instant::now();
                this.session.last.failed_at = Some(now);
                if now >= *this.until && !this.session.ctx.nested_gave_up_at_end.get() {
                    return Step::Failed(this.session.timed_out(*this.limit));
                }
                return Step::Done;
            }
            // An empty slot: nothing to poll.
            Polled::Gone => return Step::Pending,
            Polled::Pending => {
                if this.session.nested {
                    this.session.pass_up(&this.session.ctx);
                }
            }
        }
        if this.timer.is_none() {
            this.timer.set(Some(tokio::time::sleep_until(*this.until)));
        }
        let up = match this.timer.as_pin_mut() {
            Some(timer) => pin!(tokio::task::coop::unconstrained(timer))
                .poll(cx)
                .is_ready(),
            None => false,
        };
        if !up {
            return Step::Pending;
        }
        *this.ended = true;
        in_attempt(&this.session.ctx, &mut || {
            body(None);
        });
        this.session.record_own();
        Step::Failed(this.session.timed_out(*this.limit))
    }
}

/// An attempt's body in its slot, polled and dropped in place through `dyn`: the attempt's
/// own code is then generic over the body's output only (one copy for every annotated
/// function returning the same `Result`), not over the body's future (one copy per function).
/// The `dyn` is made at each poll from the attempt's typed reference, so the attempt is `Send`
/// exactly when the body is.
pub(crate) trait Body<O> {
    /// Polls the body (`Some(cx)`), putting its answer in `out` when it has one (then
    /// `Ready`); or drops it (`None`: its time is up, its caller gave up, or it may not
    /// start). `None` when the slot is empty.
    ///
    /// A body that answered is left in its slot, never polled again (the attempt has
    /// `ended`): what a finished `async` block holds is already dropped, so dropping it there
    /// and then would only cost code, a copy of the whole future per function. Its answer is
    /// written where the attempt returns it from, not handed back inside another value: one
    /// move of the `Result` fewer on every call.
    fn poll_body(
        self: Pin<&mut Self>,
        cx: Option<&mut Context<'_>>,
        out: &mut Poll<O>,
    ) -> Option<Poll<()>>;
}

impl<F: Future> Body<F::Output> for Option<F> {
    fn poll_body(
        mut self: Pin<&mut Self>,
        cx: Option<&mut Context<'_>>,
        out: &mut Poll<F::Output>,
    ) -> Option<Poll<()>> {
        match cx {
            Some(cx) => match self.as_pin_mut() {
                Some(body) => match body.poll(cx) {
                    Poll::Pending => Some(Poll::Pending),
                    Poll::Ready(r) => {
                        // `out` is empty (an attempt's body answers once): nothing to drop, and
                        // no drop compiled here, in every function's copy.
                        std::mem::forget(std::mem::replace(out, Poll::Ready(r)));
                        Some(Poll::Ready(()))
                    }
                },
                None => None,
            },
            // The one place where an unfinished body is dropped.
            None => {
                self.set(None);
                None
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Session::attempt`]: one attempt of the body in `body`.
    #[must_use = "an attempt does nothing unless awaited"]
    pub struct Attempt<'s, 'b, F: Future> {
        #[pin]
        pub(crate) core: Core<'s>,
        pub(crate) body: Pin<&'b mut Option<F>>,
    }

    impl<'s, 'b, F: Future> PinnedDrop for Attempt<'s, 'b, F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            drop_unfinished(this.core, this.body.as_mut());
        }
    }
}

/// An attempt that ended (or never started) has nothing left to drop in place; one cut short
/// drops its body in its context ([`drop_in_context`]). Generic over the body's output only,
/// the check included: the attempt's drop, compiled per function, only calls this (inlined
/// in an optimized build, where the check costs no call).
#[inline]
fn drop_unfinished<O>(core: Pin<&mut Core<'_>>, body: Pin<&mut dyn Body<O>>) {
    if core.started && !core.ended {
        drop_in_context(core, body);
    }
}

/// A body dropped mid-way (its caller gave up) may still look at its attempt, and log in its
/// span, while it unwinds its own state: dropped in its attempt's context.
#[inline(never)]
fn drop_in_context<O>(core: Pin<&mut Core<'_>>, mut body: Pin<&mut dyn Body<O>>) {
    let _entered = core.span.as_ref().map(tracing::Span::enter);
    in_attempt(&core.session.ctx, &mut || {
        body.as_mut().poll_body(None, &mut Poll::Pending);
    });
}

impl<T, E, F> Future for Attempt<'_, '_, F>
where
    F: Future<Output = Result<T, E>>,
    E: HoldsRuntimeErrors,
{
    type Output = Result<T, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T, E>> {
        let this = self.project();
        poll_attempt(this.core, this.body.as_mut(), cx)
    }
}

/// One poll of an attempt whose body returns `Result<T, E>`.
fn poll_attempt<T, E: HoldsRuntimeErrors>(
    core: Pin<&mut Core<'_>>,
    mut body: Pin<&mut dyn Body<Result<T, E>>>,
    cx: &mut Context<'_>,
) -> Poll<Result<T, E>> {
    // The answer is kept as the attempt returns it, and returned in one copy of the whole: a
    // copy field by field (from an `Option`) stalled the caller's read of it.
    let mut out = Poll::Pending;
    let step = core.step(cx, &mut |cx| match body.as_mut().poll_body(cx, &mut out) {
        None => Polled::Gone,
        Some(Poll::Pending) => Polled::Pending,
        Some(Poll::Ready(())) if matches!(out, Poll::Ready(Ok(_))) => Polled::Ok,
        Some(Poll::Ready(())) => Polled::Err,
    });
    match step {
        Step::Done => out,
        Step::Failed(e) => Poll::Ready(Err(E::from_runtime(e))),
        Step::Pending => Poll::Pending,
    }
}
