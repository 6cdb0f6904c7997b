//! Trace context from OpenTelemetry: the attempt's `traceparent` and `tracestate` are those of
//! its own span (or, when that span is not exported, of the current OpenTelemetry context),
//! written by the globally configured propagator, W3C Trace Context when none is configured.

use opentelemetry::Context;
use opentelemetry::propagation::Injector;
use opentelemetry::trace::TraceContextExt as _;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The OpenTelemetry context this attempt propagates, if there is one with a valid span.
fn context_of(span: &Span, joins: Option<u128>) -> Option<Context> {
    // In the trace handed down, if one was: a context of another trace is not the call's.
    let usable = |cx: &Context| {
        let sc = cx.span().span_context().clone();
        sc.is_valid()
            && joins.is_none_or(|t| sc.trace_id() == opentelemetry::trace::TraceId::from(t))
    };
    if !span.is_disabled() {
        let cx = span.context();
        if usable(&cx) {
            return Some(cx);
        }
    }
    Context::map_current(|cx| usable(cx).then(|| cx.clone()))
}

/// A call's span opened in a server whose `ContextLayer` read the caller's trace
/// (`inbound`: trace id, the caller's span id, flags), where the OpenTelemetry context around
/// the call is not in that trace (the service did not extract the caller's context into its
/// own spans): the call's span is parented on the caller's remote span, so that the callee
/// joins the caller's trace, with the caller's sampled flag and `tracestate`, as without the
/// feature.
pub(crate) fn join_inbound(
    span: &Span,
    inbound: (u128, u64, u8),
    tracestate: Option<&HeaderValue>,
) {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId};
    let (trace, parent, flags) = inbound;
    if span.is_disabled() || trace == 0 || parent == 0 {
        return;
    }
    let trace = TraceId::from(trace);
    let around = Span::current().context();
    let around = around.span();
    if around.span_context().is_valid() && around.span_context().trace_id() == trace {
        return;
    }
    let remote = SpanContext::new(
        trace,
        SpanId::from(parent),
        TraceFlags::new(flags),
        true,
        // Checked when it was handed down (`Inbound::tracestate`); one the OpenTelemetry API
        // refuses goes without (`inject_trace_context` sends it on as it was read).
        tracestate.and_then(otel_state).unwrap_or_default(),
    );
    // Not started yet (just made): a parent can still be set; an error otherwise is no harm.
    let _ = span.set_parent(Context::new().with_remote_span_context(remote));
}

/// Whether the OpenTelemetry API refuses to read this `tracestate` (its key rules are W3C's
/// earlier ones), so that a span's state made from it is empty.
pub(crate) fn refuses_tracestate(state: &HeaderValue) -> bool {
    otel_state(state).is_none()
}

/// A `tracestate` as the OpenTelemetry API reads it, if it does.
fn otel_state(state: &HeaderValue) -> Option<opentelemetry::trace::TraceState> {
    state.to_str().ok()?.parse().ok()
}

/// Names the attempt's OpenTelemetry span after the method it sent.
pub(crate) fn rename(span: &Span, name: &'static str) {
    span.context().span().update_name(name);
}

/// Writes the OpenTelemetry trace context into `headers`; `false` when there is none.
pub(crate) fn inject(headers: &mut HeaderMap, span: &Span, joins: Option<u128>) -> bool {
    let Some(cx) = context_of(span, joins) else {
        return false;
    };
    let mut injector = Headers(headers);
    // The API's default global propagator is a no-op (it has no fields): W3C then.
    let injected = opentelemetry::global::get_text_map_propagator(|p| {
        if p.fields().next().is_none() {
            return false;
        }
        p.inject_context(&cx, &mut injector);
        true
    });
    if !injected {
        w3c(&cx, &mut injector);
    }
    true
}

/// The `traceparent` [`inject`] would write (W3C format), if there is an OpenTelemetry context.
pub(crate) fn traceparent(span: &Span, joins: Option<u128>) -> Option<String> {
    context_of(span, joins).map(|cx| traceparent_of(&cx))
}

fn traceparent_of(cx: &Context) -> String {
    let span = cx.span();
    let sc = span.span_context();
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

fn w3c(cx: &Context, injector: &mut Headers<'_>) {
    injector.set("traceparent", traceparent_of(cx));
    let span = cx.span();
    let state = span.span_context().trace_state().header();
    if !state.is_empty() {
        injector.set("tracestate", state);
    }
}

/// The request's headers, for a propagator that writes only what the request does not carry
/// already: a `tracestate` (or `baggage`) set by hand goes out as it was, as a `traceparent`
/// set by hand does. An empty value is not written (the SDK's W3C propagator writes an empty
/// `tracestate` for a trace without one, which the spec asks senders to avoid).
struct Headers<'a>(&'a mut HeaderMap);

impl Injector for Headers<'_> {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::try_from(value),
        ) && !self.0.contains_key(&name)
        {
            self.0.insert(name, value);
        }
    }
}
