//! One attempt of a call's body, as a future written out by hand: the body polled with the
//! session's own attempt context, under the attempt's time limit.
//!
//! What an `async fn` around `tokio::time::timeout_at(until, Scoped::new(ctx, body))` did, in
//! one small state machine: the context is not built and moved into the future (it lives in the
//! session, filled in place), the timer is armed only when the body first waits (a body that
//! answers at once never touches the timer wheel, as `tokio::time::Timeout` never registers
//! its timer then either; what is saved is building it), and a body that finished is dropped
//! where it finished. The poll is the only code generated per annotated function; everything
//! before and after it (the breaker, the bookkeeping) is the session's, compiled once.

use std::future::Future;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::context::in_attempt;
use crate::error::Error;
use crate::session::Session;

pin_project_lite::pin_project! {
    /// The future of [`Session::attempt`]: one attempt of the body.
    #[must_use = "an attempt does nothing unless awaited"]
    pub struct Attempt<'s, F> {
        session: &'s mut Session,
        // When the attempt ends (its timeout or the call's deadline) and how long it may run;
        // set when it starts, at its first poll.
        until: Instant,
        limit: Duration,
        started: bool,
        // The span the body runs in, entered around each poll (none with tracing off).
        span: Option<tracing::Span>,
        // `None` once the body has finished (or was dropped at its time limit).
        #[pin]
        body: Option<F>,
        // Armed when the body first waits.
        #[pin]
        timer: Option<Sleep>,
    }

    impl<'s, F> PinnedDrop for Attempt<'s, F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // A body dropped mid-way (its caller gave up) may still look at its attempt, and
            // log in its span, while it unwinds its own state.
            if *this.started && this.body.is_some() {
                let _entered = this.span.as_ref().map(tracing::Span::enter);
                let mut body = this.body;
                in_attempt(&this.session.ctx, &mut || body.set(None));
            }
        }
    }
}

impl<'s, F> Attempt<'s, F> {
    pub(crate) fn new(session: &'s mut Session, body: F) -> Attempt<'s, F> {
        let until = session.deadline;
        Attempt {
            session,
            until,
            limit: Duration::ZERO,
            started: false,
            span: None,
            body: Some(body),
            timer: None,
        }
    }
}

impl<T, E, F> Future for Attempt<'_, F>
where
    F: Future<Output = Result<T, E>>,
    E: From<Error>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T, E>> {
        let mut this = self.project();
        if !*this.started {
            *this.started = true;
            match this.session.begin_attempt() {
                Ok((until, limit)) => (*this.until, *this.limit) = (until, limit),
                Err(e) => {
                    // Refused before it started (an open breaker, no time left): the body never
                    // ran, and is dropped unpolled.
                    this.body.set(None);
                    return Poll::Ready(Err(E::from(e)));
                }
            }
            *this.span = this.session.body_span();
        }
        let mut out = Poll::Pending;
        {
            let _entered = this.span.as_ref().map(tracing::Span::enter);
            let body = &mut this.body;
            in_attempt(&this.session.ctx, &mut || {
                if let Some(fut) = body.as_mut().as_pin_mut()
                    && let Poll::Ready(r) = fut.poll(cx)
                {
                    out = Poll::Ready(r);
                    // Dropped here, in its context, while it is still current.
                    body.set(None);
                }
            });
        }
        match out {
            Poll::Ready(Ok(v)) => {
                this.session.record_own();
                this.session.succeeded();
                Poll::Ready(Ok(v))
            }
            Poll::Ready(Err(e)) => {
                this.session.record_own();
                Poll::Ready(Err(e))
            }
            Poll::Pending => {
                if this.body.is_none() {
                    // Polled again after it finished.
                    return Poll::Pending;
                }
                if this.timer.is_none() {
                    this.timer.set(Some(tokio::time::sleep_until(*this.until)));
                }
                let Some(timer) = this.timer.as_mut().as_pin_mut() else {
                    return Poll::Pending;
                };
                // The time limit is checked even when the body used up the task's budget
                // (what `tokio::time::Timeout` does for its timer).
                if pin!(tokio::task::coop::unconstrained(timer))
                    .poll(cx)
                    .is_pending()
                {
                    return Poll::Pending;
                }
                {
                    let _entered = this.span.as_ref().map(tracing::Span::enter);
                    let mut body = this.body;
                    in_attempt(&this.session.ctx, &mut || body.set(None));
                }
                this.session.record_own();
                Poll::Ready(Err(E::from(this.session.timed_out(*this.limit))))
            }
        }
    }
}
