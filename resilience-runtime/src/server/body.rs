//! The response body of the layer: the handler's own, or bytes the layer holds.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::mpsc::Receiver;

type BoxError = Box<dyn StdError + Send + Sync>;

pin_project! {
    /// The body of a response from [`IdempotencyService`](super::IdempotencyService).
    ///
    /// Either the handler's body streamed through untouched (requests the layer does not cover,
    /// responses it does not keep), or a buffered body: a first response it stored, a replay, or
    /// one of its own error answers.
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Full { data: Option<Bytes> },
        // The handler's body failed while the layer was reading it: yield what was read, then
        // the error, so the caller gets what it would have without the layer, cut short.
        Failed { prefix: Option<Bytes>, error: Option<BoxError> },
        // Larger than the layer keeps: what it read, then the rest of the handler's body.
        Prefixed { prefix: Option<Bytes>, body: Pin<Box<B>> },
        // The same, the rest read by a task of the layer's, which reads on to the body's end
        // when this is dropped (the caller gone). `rest` is what is left of the body's hint.
        Pumped {
            prefix: Option<Bytes>,
            rx: Receiver<Result<Frame<Bytes>, BoxError>>,
            rest: SizeHint,
        },
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        ResponseBody {
            kind: Kind::Inner { body },
        }
    }

    pub(crate) fn full(data: Bytes) -> Self {
        ResponseBody {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    pub(crate) fn prefixed(prefix: Bytes, body: Pin<Box<B>>) -> Self {
        ResponseBody {
            kind: Kind::Prefixed {
                prefix: (!prefix.is_empty()).then_some(prefix),
                body,
            },
        }
    }

    pub(crate) fn pumped(
        prefix: Bytes,
        rx: Receiver<Result<Frame<Bytes>, BoxError>>,
        rest: SizeHint,
    ) -> Self {
        ResponseBody {
            kind: Kind::Pumped {
                prefix: (!prefix.is_empty()).then_some(prefix),
                rx,
                rest,
            },
        }
    }

    pub(crate) fn failed(prefix: Bytes, error: BoxError) -> Self {
        ResponseBody {
            kind: Kind::Failed {
                prefix: (!prefix.is_empty()).then_some(prefix),
                error: Some(error),
            },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Failed { prefix, error } => match prefix.take() {
                Some(d) => Poll::Ready(Some(Ok(Frame::data(d)))),
                None => Poll::Ready(error.take().map(Err)),
            },
            KindProj::Prefixed { prefix, body } => match prefix.take() {
                Some(d) => Poll::Ready(Some(Ok(Frame::data(d)))),
                None => body.as_mut().poll_frame(cx).map_err(Into::into),
            },
            KindProj::Pumped { prefix, rx, rest } => match prefix.take() {
                Some(d) => Poll::Ready(Some(Ok(Frame::data(d)))),
                None => {
                    let next = std::task::ready!(rx.poll_recv(cx));
                    if let Some(Ok(d)) = next.as_ref().map(|f| f.as_ref().map(Frame::data_ref))
                        && let Some(d) = d
                    {
                        let len = d.len() as u64;
                        let mut left = SizeHint::new();
                        left.set_lower(rest.lower().saturating_sub(len));
                        if let Some(upper) = rest.upper() {
                            left.set_upper(upper.saturating_sub(len));
                        }
                        *rest = left;
                    }
                    Poll::Ready(next)
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
            Kind::Failed { prefix, error } => prefix.is_none() && error.is_none(),
            Kind::Prefixed { prefix, body } => prefix.is_none() && body.is_end_stream(),
            Kind::Pumped { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Failed { .. } => SizeHint::default(),
            Kind::Pumped { prefix, rest, .. } => with_prefix(prefix, rest),
            Kind::Prefixed { prefix, body } => with_prefix(prefix, &body.size_hint()),
        }
    }
}

/// The hint of `rest`, what was read before it (`prefix`) added.
fn with_prefix(prefix: &Option<Bytes>, rest: &SizeHint) -> SizeHint {
    let read = prefix.as_ref().map_or(0, |d| d.len() as u64);
    let mut hint = SizeHint::new();
    hint.set_lower(rest.lower() + read);
    if let Some(upper) = rest.upper() {
        hint.set_upper(upper + read);
    }
    hint
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Inner { .. } => f.write_str("ResponseBody::Inner(..)"),
            Kind::Full { data } => f
                .debug_tuple("ResponseBody::Full")
                .field(&data.as_ref().map_or(0, Bytes::len))
                .finish(),
            Kind::Failed { prefix, error } => f
                .debug_tuple("ResponseBody::Failed")
                .field(&prefix.as_ref().map_or(0, Bytes::len))
                .field(error)
                .finish(),
            Kind::Prefixed { prefix, .. } => f
                .debug_tuple("ResponseBody::Prefixed")
                .field(&prefix.as_ref().map_or(0, Bytes::len))
                .finish(),
            Kind::Pumped { prefix, .. } => f
                .debug_tuple("ResponseBody::Pumped")
                .field(&prefix.as_ref().map_or(0, Bytes::len))
                .finish(),
        }
    }
}
