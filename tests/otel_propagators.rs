//! With the `opentelemetry` feature, the global propagator decides what a call's requests
//! carry: W3C `traceparent` when none was set (the API's default no-op), and only what a
//! propagator of another format writes when one is set (a B3 or Jaeger propagator writes no
//! `traceparent`). One test: the propagator is process-wide.

use std::collections::HashMap;

use opentelemetry::propagation::{Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry::{Context, propagation::Extractor};
use opentelemetry_sdk::trace::SdkTracerProvider;
use resilience_fault_server::{Action, FaultServer, Script};
use resilience_runtime::{Error, resilient};
use tracing::Instrument as _;
use tracing_subscriber::layer::SubscriberExt as _;

#[resilient(method = GET, timeout = "2s", max_attempts = 1, budget = false)]
async fn fetch(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// A propagator of a format of its own: one header, `x-trace`, holding the trace id.
#[derive(Debug)]
struct OwnFormat {
    fields: Vec<String>,
}

impl TextMapPropagator for OwnFormat {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        injector.set("x-trace", cx.span().span_context().trace_id().to_string());
    }
    fn extract_with_context(&self, cx: &Context, _: &dyn Extractor) -> Context {
        cx.clone()
    }
    fn fields(&self) -> opentelemetry::propagation::text_map_propagator::FieldIter<'_> {
        opentelemetry::propagation::text_map_propagator::FieldIter::new(&self.fields)
    }
}

#[tokio::test]
async fn the_global_propagator_decides_what_a_call_carries() {
    let provider = SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("propagators")));
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let c = reqwest::Client::new();
    let headers = |i: usize| -> HashMap<String, String> {
        let r = &server.requests()[i];
        ["traceparent", "x-trace"]
            .into_iter()
            .filter_map(|h| r.header(h).map(|v| (h.to_owned(), v.to_owned())))
            .collect()
    };

    // No propagator set: W3C, in the trace of the span the call is made in.
    let span = tracing::info_span!("handler");
    let trace = {
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        span.context().span().span_context().trace_id().to_string()
    };
    fetch(&c, &server.url("/")).instrument(span).await.unwrap();
    let first = headers(0);
    let tp = first.get("traceparent").expect("a traceparent");
    assert_eq!(tp.split('-').nth(1), Some(trace.as_str()), "{first:?}");
    assert!(!first.contains_key("x-trace"), "{first:?}");

    // A propagator of another format: what it writes, and no traceparent of the runtime's.
    opentelemetry::global::set_text_map_propagator(OwnFormat {
        fields: vec!["x-trace".to_owned()],
    });
    let span = tracing::info_span!("handler");
    fetch(&c, &server.url("/")).instrument(span).await.unwrap();
    let second = headers(1);
    assert!(second.contains_key("x-trace"), "{second:?}");
    assert!(!second.contains_key("traceparent"), "{second:?}");
}
