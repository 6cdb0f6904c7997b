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
        // The sends the runtime saw during the helper's own polls (None: not polled yet in
        // an attempt). Its own: a `join!` branch beside it that sends while it runs is not
        // the helper's, and must not make its unseen POST look seen.
        seen: Option<u32>,
        done: bool,
    }

    impl<F> PinnedDrop for Helper<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !*this.done {
                settle(*this.seen);
            }
        }
    }
}

/// Wraps a helper's future (or what `.await` takes: an `IntoFuture` builder); see the module.
#[inline]
pub fn helper<F: IntoFuture>(fut: F) -> Helper<F::IntoFuture> {
    Helper {
        fut: fut.into_future(),
        seen: None,
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

/// A helper's future that tells when it has ended (`.fuse()`, `Fuse::terminated()`, as
/// `futures::select!` needs of its arms) still does, watched (`helper(if go { f.fuse() } else
/// { Fuse::terminated() })`).
impl<F: futures_core::FusedFuture> futures_core::FusedFuture for Helper<F> {
    #[inline]
    fn is_terminated(&self) -> bool {
        self.fut.is_terminated()
    }
}

/// The helper ran, and the runtime saw `seen` sends during its polls: none, an unseen send.
fn settle(seen: Option<u32>) {
    if let Some(seen) = seen {
        let _ = with_attempt(|ctx| {
            ctx.helpers_running
                .set(ctx.helpers_running.get().saturating_sub(1));
            if seen == 0 {
                ctx.unseen_helper.set(true);
            }
        });
    }
}

impl<F: Future> Future for Helper<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let first = this.seen.is_none();
        let before = with_attempt(|ctx| {
            if first {
                ctx.helpers_running.set(ctx.helpers_running.get() + 1);
            }
            ctx.seen.get()
        });
        if first && before.is_some() {
            *this.seen = Some(0);
        }
        let out = this.fut.poll(cx);
        // What was seen during this poll is the helper's own.
        if let (Some(before), Some(seen)) = (before, this.seen.as_mut())
            && let Some(after) = with_attempt(|ctx| ctx.seen.get())
        {
            *seen = seen.saturating_add(after.wrapping_sub(before));
        }
        if out.is_ready() {
            *this.done = true;
            settle(*this.seen);
        }
        out
    }
}
