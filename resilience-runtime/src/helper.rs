//! A helper the body awaits, handed the client: what did the runtime see it send?
//!
//! The rewrite stamps the body's own `.send()` and `.execute(…)`, and nested `#[resilient]`
//! calls report what they send; a request a helper function sends through the client it was
//! handed goes unseen and without the key. The generated code wraps such a helper's future
//! (`create_order(c, &order).await`, `self.place(order).await`) in [`helper`]: when it ends,
//! or is dropped after it started, without the runtime having seen a send while it ran, the
//! attempt is taken to have sent the least safe method, unkeyed, as an attempt that sent
//! nothing the runtime saw is. Only where the function's method is inferred from the body:
//! a declared `method` is the least safe the body sends, helpers included.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::context::with_attempt;

pin_project_lite::pin_project! {
    /// See [`helper`].
    #[derive(Debug)]
    #[must_use = "futures do nothing unless polled"]
    pub struct Helper<F> {
        #[pin]
        fut: F,
        // The attempt's count of seen sends when the helper first ran (None: not yet).
        start: Option<u32>,
        done: bool,
    }

    impl<F> PinnedDrop for Helper<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !*this.done {
                settle(*this.start);
            }
        }
    }
}

/// Wraps a helper's future (or what `.await` takes: an `IntoFuture` builder); see the module.
#[inline]
pub fn helper<F: IntoFuture>(fut: F) -> Helper<F::IntoFuture> {
    Helper {
        fut: fut.into_future(),
        start: None,
        done: false,
    }
}

impl<F: Unpin> Helper<F> {
    /// The helper pinned where it is, as `.as_mut()` pins a `Pin<Box<…>>` or a `BoxFuture`
    /// kept to be polled later (`let mut f = api.place(o);` then `f.as_mut()` in a loop of
    /// `select!`): the rewrite wraps such a kept future where it is made, and this keeps the
    /// body's `.as_mut()` meaning what it did, the helper still watched.
    #[inline]
    pub fn as_mut(&mut self) -> Pin<&mut Self> {
        Pin::new(self)
    }
}

/// The helper ran from `start` until now: nothing seen since, an unseen send.
fn settle(start: Option<u32>) {
    if let Some(start) = start {
        let _ = with_attempt(|ctx| {
            ctx.helpers_running
                .set(ctx.helpers_running.get().saturating_sub(1));
            if ctx.seen.get() == start {
                ctx.unseen_helper.set(true);
            }
        });
    }
}

impl<F: Future> Future for Helper<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if this.start.is_none() {
            *this.start = with_attempt(|ctx| {
                ctx.helpers_running.set(ctx.helpers_running.get() + 1);
                ctx.seen.get()
            });
        }
        let out = this.fut.poll(cx);
        if out.is_ready() {
            *this.done = true;
            settle(*this.start);
        }
        out
    }
}
