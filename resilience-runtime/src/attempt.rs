//! One attempt of a call's body, as a future written out by hand: the body polled with the
//! session's own attempt context, under the attempt's time limit.
//!
//! What an `async fn` around `tokio::time::timeout_at(until, Scoped::new(ctx, body))` did, in
//! one small state machine: the context is not built and moved into the future (it lives in the
//! session, filled in place), the timer is armed only when the body first waits (a body that
//! answers at once never touches the timer wheel, as `tokio::time::Timeout` never registers
//! its timer then either; what is saved is building it), and a body that finished is dropped
//! where it finished. What is compiled per annotated function is small: the poll and drop of
//! the body in its slot ([`Body`], [`Slot`]) and a forwarding poll; the attempt's own logic is
//! generic over the body's output only, and everything before and after it (the breaker, the
//! bookkeeping, the timer) is the non-generic [`Core`]'s, compiled once.

use std::future::Future;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::context::in_attempt;
use crate::error::Error;
use crate::session::Session;
use crate::telemetry;

pin_project_lite::pin_project! {
    /// What an attempt holds that does not depend on its body: compiled once, not once per
    /// annotated function.
    struct Core<'s> {
        session: &'s mut Session,
        // When the attempt ends (its timeout or the call's deadline) and how long it may run;
        // set when it starts, at its first poll.
        until: Instant,
        limit: Duration,
        started: bool,
        // The span the body runs in, entered around each poll (none with tracing off).
        span: Option<tracing::Span>,
        // Armed when the body first waits.
        #[pin]
        timer: Option<Sleep>,
    }
}

/// What the body did when asked (see [`Core::step`]).
enum Polled {
    Pending,
    Ok,
    Err,
    /// No body: it finished earlier, or was dropped when asked to be.
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
    fn new(session: &'s mut Session) -> Core<'s> {
        let until = session.deadline;
        Core {
            session,
            until,
            limit: Duration::ZERO,
            started: false,
            span: None,
            timer: None,
        }
    }

    /// One poll of the attempt, everything but the body itself: `body(Some(cx))` polls the
    /// body (and drops it when it answers), `body(None)` drops it.
    ///
    /// The first poll starts the attempt (the breaker's permit, the time limit, the span). The
    /// body is polled in the attempt's span, with the attempt's context current. After it
    /// returns `Pending` the timer is armed (the first time) and checked, even when the body
    /// used up the task's budget (what `tokio::time::Timeout` does for its timer); when the
    /// time is up the body is dropped, in its context.
    fn step(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        body: &mut dyn FnMut(Option<&mut Context<'_>>) -> Polled,
    ) -> Step {
        let mut this = self.project();
        if !*this.started {
            *this.started = true;
            match this.session.begin_attempt() {
                Ok((until, limit)) => (*this.until, *this.limit) = (until, limit),
                Err(e) => {
                    // Refused before it started: the body never ran, and is dropped unpolled.
                    body(None);
                    return Step::Failed(e);
                }
            }
            let session = &**this.session;
            *this.span = telemetry::body_span(session.attempt_scope.as_ref(), &session.span);
        }
        let _entered = this.span.as_ref().map(tracing::Span::enter);
        let mut polled = Polled::Pending;
        in_attempt(&this.session.ctx, &mut || polled = body(Some(&mut *cx)));
        match polled {
            Polled::Ok | Polled::Err => {
                this.session.record_own();
                if matches!(polled, Polled::Ok) {
                    this.session.succeeded();
                }
                return Step::Done;
            }
            // Polled again after it finished.
            Polled::Gone => return Step::Pending,
            Polled::Pending => {}
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
        in_attempt(&this.session.ctx, &mut || {
            body(None);
        });
        this.session.record_own();
        Step::Failed(this.session.timed_out(*this.limit))
    }

    /// Runs `f` (the drop of a body its caller gave up on) in the attempt's span, with the
    /// attempt's context current.
    fn run(self: Pin<&mut Self>, f: &mut dyn FnMut()) {
        let this = self.project();
        let _entered = this.span.as_ref().map(tracing::Span::enter);
        in_attempt(&this.session.ctx, f);
    }
}

/// An attempt's body in its slot, dropped in place through `dyn` (see [`Body`]).
pub trait Slot {
    /// Drops the body (a no-op when the slot is empty).
    fn drop_body(self: Pin<&mut Self>);

    /// Whether the slot holds a body.
    fn has_body(&self) -> bool;
}

/// An attempt's body in its slot, polled in place through `dyn`: the attempt's own code is
/// then generic over the body's output only (one copy for every annotated function returning
/// the same `Result`), not over the body's future (one copy per function). The `dyn` is made
/// at each poll from the attempt's typed reference, so the attempt is `Send` exactly when
/// the body is.
pub trait Body<O>: Slot {
    /// Polls the body: `None` when the slot is empty (the body finished, or was dropped).
    /// A body that answers is dropped at once, in the poll.
    fn poll_body(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Option<Poll<O>>;
}

impl<F> Slot for Option<F> {
    fn drop_body(mut self: Pin<&mut Self>) {
        self.set(None);
    }

    fn has_body(&self) -> bool {
        self.is_some()
    }
}

impl<F: Future> Body<F::Output> for Option<F> {
    fn poll_body(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Option<Poll<F::Output>> {
        let polled = match self.as_mut().as_pin_mut() {
            Some(body) => body.poll(cx),
            None => return None,
        };
        if polled.is_ready() {
            self.set(None);
        }
        Some(polled)
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Session::attempt`]: one attempt of the body in `body`.
    #[must_use = "an attempt does nothing unless awaited"]
    pub struct Attempt<'s, 'b, F> {
        #[pin]
        core: Core<'s>,
        body: Pin<&'b mut Option<F>>,
    }

    impl<'s, 'b, F> PinnedDrop for Attempt<'s, 'b, F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            drop_unfinished(this.core, this.body.as_mut());
        }
    }
}

/// A body dropped mid-way (its caller gave up) may still look at its attempt, and log in its
/// span, while it unwinds its own state: dropped in its attempt's context.
fn drop_unfinished(core: Pin<&mut Core<'_>>, mut body: Pin<&mut dyn Slot>) {
    if core.started && body.has_body() {
        core.run(&mut || body.as_mut().drop_body());
    }
}

impl<'s, 'b, F> Attempt<'s, 'b, F> {
    pub(crate) fn new(
        session: &'s mut Session,
        body: Pin<&'b mut Option<F>>,
    ) -> Attempt<'s, 'b, F> {
        Attempt {
            core: Core::new(session),
            body,
        }
    }
}

impl<T, E, F> Future for Attempt<'_, '_, F>
where
    F: Future<Output = Result<T, E>>,
    E: From<Error>,
{
    type Output = Result<T, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T, E>> {
        let this = self.project();
        poll_attempt(this.core, this.body.as_mut(), cx)
    }
}

/// One poll of an attempt whose body returns `Result<T, E>`.
fn poll_attempt<T, E: From<Error>>(
    core: Pin<&mut Core<'_>>,
    mut body: Pin<&mut dyn Body<Result<T, E>>>,
    cx: &mut Context<'_>,
) -> Poll<Result<T, E>> {
    let mut out = None;
    let step = core.step(cx, &mut |cx| {
        let Some(cx) = cx else {
            body.as_mut().drop_body();
            return Polled::Gone;
        };
        match body.as_mut().poll_body(cx) {
            None => Polled::Gone,
            Some(Poll::Pending) => Polled::Pending,
            Some(Poll::Ready(r)) => {
                let ok = r.is_ok();
                out = Some(r);
                if ok { Polled::Ok } else { Polled::Err }
            }
        }
    });
    match (step, out) {
        (Step::Done, Some(r)) => Poll::Ready(r),
        (Step::Failed(e), _) => Poll::Ready(Err(E::from(e))),
        _ => Poll::Pending,
    }
}
