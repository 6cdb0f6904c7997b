//! With the `opentelemetry` feature: two services on loopback, each with a server span that
//! joins the incoming trace; the first calls the second through `#[resilient]` (a 503, then a
//! 200). One trace, a client span per attempt under the call's span, each attempt's
//! `traceparent` naming its own span, and the sampled flag following the caller's sampler.
//! The spans come from the OpenTelemetry SDK's in-memory exporter.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, Sampler, SdkTracerProvider, SpanData};
use resilience_runtime::{Error, RequestBuilderExt as _, resilient};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

#[resilient(
    timeout = "2s",
    backoff(initial = "1ms", max = "1ms", jitter = none),
    budget = false,
)]
async fn call_b(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url)
        .resilient()
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

fn incoming(headers: &HeaderMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)))
}

/// Service B: 503 on its first request, then 200; keeps every `traceparent` it received.
#[derive(Clone, Default)]
struct B {
    hits: Arc<AtomicU32>,
    traceparents: Arc<Mutex<Vec<String>>>,
    tracestates: Arc<Mutex<Vec<String>>>,
}

async fn b_handler(State(b): State<B>, headers: HeaderMap) -> (StatusCode, &'static str) {
    let span = tracing::info_span!("b.handle", otel.kind = "server");
    let _ = span.set_parent(incoming(&headers));
    let _e = span.enter();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    b.traceparents.lock().unwrap().push(header("traceparent"));
    b.tracestates.lock().unwrap().push(header("tracestate"));
    if b.hits.fetch_add(1, Ordering::SeqCst) == 0 {
        (StatusCode::SERVICE_UNAVAILABLE, "busy")
    } else {
        (StatusCode::OK, "ok")
    }
}

/// Service A: serves `/a` by calling B.
async fn a_handler(State(b_url): State<String>, headers: HeaderMap) -> String {
    let span = tracing::info_span!("a.handle", otel.kind = "server");
    let _ = span.set_parent(incoming(&headers));
    async {
        call_b(&reqwest::Client::new(), &b_url)
            .await
            .unwrap_or_else(|e| format!("error: {e}"))
    }
    .instrument(span)
    .await
}

async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// Service B alone: its state and address.
async fn serve_b() -> (B, SocketAddr) {
    let b_state = B::default();
    let b = serve(
        axum::Router::new()
            .route("/b", get(b_handler))
            .with_state(b_state.clone()),
    )
    .await;
    (b_state, b)
}

struct Services {
    a: SocketAddr,
    b: SocketAddr,
    b_state: B,
}

async fn services() -> Services {
    let (b_state, b) = serve_b().await;
    let a = serve(
        axum::Router::new()
            .route("/a", get(a_handler))
            .with_state(format!("http://{b}/b")),
    )
    .await;
    Services { a, b, b_state }
}

fn tracing_with(sampler: Sampler) -> (InMemorySpanExporter, tracing::subscriber::DefaultGuard) {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("otel-test")));
    (exporter, tracing::subscriber::set_default(subscriber))
}

/// A call's span (exported under its function's path, with a `function` attribute).
fn is_call(span: &SpanData) -> bool {
    attr(span, "function").is_some()
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv: &&KeyValue| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn s(v: &str) -> Value {
    Value::String(v.to_owned().into())
}

/// Waits (bounded) until the exporter holds `n` spans.
async fn finished(exporter: &InMemorySpanExporter, n: usize) -> Vec<SpanData> {
    for _ in 0..200 {
        let spans = exporter.get_finished_spans().unwrap();
        if spans.len() >= n {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    exporter.get_finished_spans().unwrap()
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Waits for `n` spans, checks there are exactly `n`, all in [`TRACE`]; returns them and
/// their names.
async fn finished_in_trace(
    exporter: &InMemorySpanExporter,
    n: usize,
) -> (Vec<SpanData>, Vec<String>) {
    let spans = finished(exporter, n).await;
    let names: Vec<_> = spans.iter().map(|s| s.name.to_string()).collect();
    assert_eq!(spans.len(), n, "{names:?}");
    for sp in &spans {
        assert_eq!(sp.span_context.trace_id().to_string(), TRACE, "{}", sp.name);
    }
    (spans, names)
}

#[tokio::test]
async fn the_callee_joins_the_callers_trace_with_a_client_span_per_attempt() {
    let (exporter, _guard) = tracing_with(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
    let svc = services().await;
    let body = reqwest::Client::new()
        .get(format!("http://{}/a", svc.a))
        .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
        .header("tracestate", "congo=t61rcWkgMzE")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "ok");

    // a.handle, the call, two attempts, two b.handle.
    let (spans, names) = finished_in_trace(&exporter, 6).await;
    let by = |n: &str| {
        spans
            .iter()
            .filter(move |s| s.name == n)
            .collect::<Vec<_>>()
    };
    let a = by("a.handle")[0];
    let call = spans.iter().find(|s| is_call(s)).expect("the call span");
    // Named after the function it calls, the `resilient` span's `otel.name`.
    assert_eq!(call.name, "otel::call_b", "{names:?}");
    let mut attempts = by("GET");
    attempts.sort_by_key(|s| s.start_time);
    let mut b = by("b.handle");
    b.sort_by_key(|s| s.start_time);
    assert_eq!((attempts.len(), b.len()), (2, 2), "{names:?}");

    // The call span: a child of the span it was made in, with function and policy.
    assert_eq!(call.parent_span_id, a.span_context.span_id());
    assert_eq!(attr(call, "function"), Some(&s("otel::call_b")));
    assert!(attr(call, "policy").is_some());

    let url = format!("http://{}/b", svc.b);
    let received = svc.b_state.traceparents.lock().unwrap().clone();
    // The caller's tracestate travels on, through the global (W3C) propagator.
    assert_eq!(
        *svc.b_state.tracestates.lock().unwrap(),
        vec!["congo=t61rcWkgMzE"; 2]
    );
    for (i, at) in attempts.iter().enumerate() {
        assert_eq!(at.span_kind, SpanKind::Client, "attempt {}", i + 1);
        assert_eq!(at.parent_span_id, call.span_context.span_id());
        assert_eq!(attr(at, "http.request.method"), Some(&s("GET")));
        assert_eq!(attr(at, "server.address"), Some(&s("127.0.0.1")));
        assert_eq!(
            attr(at, "server.port"),
            Some(&Value::I64(i64::from(svc.b.port())))
        );
        assert_eq!(attr(at, "url.full"), Some(&s(&url)));
        assert_eq!(
            attr(at, "resilience.attempt"),
            Some(&Value::I64(i as i64 + 1))
        );
        // The callee's server span is a child of this attempt's client span.
        assert_eq!(b[i].parent_span_id, at.span_context.span_id());
        assert!(b[i].parent_span_is_remote);
        assert_eq!(
            received[i],
            format!("00-{TRACE}-{}-01", at.span_context.span_id())
        );
    }
    let (first, second) = (attempts[0], attempts[1]);
    assert_eq!(
        attr(first, "http.response.status_code"),
        Some(&Value::I64(503))
    );
    assert_eq!(attr(first, "error.type"), Some(&s("503")));
    assert_eq!(attr(first, "resilience.class"), Some(&s("status")));
    assert_eq!(attr(first, "resilience.decision"), Some(&s("retry")));
    assert_eq!(attr(first, "resilience.delay_ms"), Some(&Value::I64(1)));
    assert_eq!(attr(first, "http.request.resend_count"), None);
    assert!(matches!(
        first.status,
        opentelemetry::trace::Status::Error { .. }
    ));

    assert_eq!(
        attr(second, "http.response.status_code"),
        Some(&Value::I64(200))
    );
    assert_eq!(attr(second, "error.type"), None);
    assert_eq!(attr(second, "resilience.decision"), Some(&s("success")));
    assert_eq!(
        attr(second, "http.request.resend_count"),
        Some(&Value::I64(1))
    );
}

#[tokio::test]
async fn the_sampled_flag_follows_the_callers_sampler() {
    let (exporter, _guard) = tracing_with(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
    let svc = services().await;
    // The caller decided not to sample this trace.
    let body = reqwest::Client::new()
        .get(format!("http://{}/a", svc.a))
        .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-00"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "ok");
    let received = svc.b_state.traceparents.lock().unwrap().clone();
    assert_eq!(received.len(), 2);
    for tp in &received {
        assert!(tp.starts_with(&format!("00-{TRACE}-")), "{tp}");
        assert!(tp.ends_with("-00"), "not sampled: {tp}");
    }
    assert_ne!(received[0], received[1], "a new parent id per attempt");
    assert!(exporter.get_finished_spans().unwrap().is_empty());
}

/// A service that relies on `ContextLayer` for the caller's trace, its handler's span not
/// parented by an OpenTelemetry extractor (a root of its own trace): the call to B still
/// joins the caller's trace, with the caller's sampled flag.
#[tokio::test]
async fn a_call_behind_context_layer_joins_the_callers_trace_without_an_extractor() {
    let (_exporter, _guard) = tracing_with(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
    let (b_state, b) = serve_b().await;
    async fn a_plain(State(b_url): State<String>) -> String {
        let span = tracing::info_span!("a.handle", otel.kind = "server");
        async {
            call_b(&reqwest::Client::new(), &b_url)
                .await
                .unwrap_or_else(|e| format!("error: {e}"))
        }
        .instrument(span)
        .await
    }
    let a = serve(
        axum::Router::new()
            .route("/a", get(a_plain))
            .with_state(format!("http://{b}/b"))
            .layer(resilience_runtime::server::ContextLayer::new()),
    )
    .await;
    // The last: a vendor key of W3C's Level 2 form that the OpenTelemetry API's parser
    // refuses (more than 13 characters after `@`): the list still goes on as it came.
    for (flags, state) in [
        ("01", "congo=t61rcWkgMzE"),
        ("00", "congo=t61rcWkgMzE"),
        ("01", "t@vvvvvvvvvvvvvvv=1,congo=t61rcWkgMzE"),
    ] {
        b_state.traceparents.lock().unwrap().clear();
        b_state.tracestates.lock().unwrap().clear();
        b_state.hits.store(0, Ordering::SeqCst);
        let body = reqwest::Client::new()
            .get(format!("http://{a}/a"))
            .header(
                "traceparent",
                format!("00-{TRACE}-00f067aa0ba902b7-{flags}"),
            )
            .header("tracestate", state)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "ok");
        let received = b_state.traceparents.lock().unwrap().clone();
        assert_eq!(received.len(), 2, "{received:?}");
        for tp in &received {
            assert!(tp.starts_with(&format!("00-{TRACE}-")), "{tp}");
            assert!(tp.ends_with(&format!("-{flags}")), "{tp}");
        }
        // The caller's tracestate goes on with the trace, sampled or not.
        let states = b_state.tracestates.lock().unwrap().clone();
        assert_eq!(states, [state; 2], "flags {flags}");
    }
}

/// The same with the library's own spans filtered out (`resilience_runtime=warn`, a service
/// that keeps its traces to its own spans): the handler's span, a root of its own trace, is
/// then the current span when the request is stamped; the call still joins the caller's
/// trace, with the caller's sampled flag, not the handler's new one.
#[tokio::test]
async fn with_the_librarys_spans_filtered_out_a_call_still_joins_the_callers_trace() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(InMemorySpanExporter::default())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new(
            "info,resilience_runtime=warn",
        ))
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("otel-test")));
    let _guard = tracing::subscriber::set_default(subscriber);
    let (b_state, b) = serve_b().await;
    for flags in ["01", "00"] {
        b_state.traceparents.lock().unwrap().clear();
        let inbound = resilience_runtime::Inbound::NONE
            .traceparent(&format!("00-{TRACE}-00f067aa0ba902b7-{flags}"));
        let span = tracing::info_span!("a.handle", otel.kind = "server");
        let got = resilience_runtime::with_inbound(
            inbound,
            async { call_b(&reqwest::Client::new(), &format!("http://{b}/b")).await }
                .instrument(span),
        )
        .await;
        assert_eq!(got.unwrap(), "ok");
        let received = b_state.traceparents.lock().unwrap().clone();
        assert!(!received.is_empty());
        for tp in &received {
            assert!(tp.starts_with(&format!("00-{TRACE}-")), "{tp}");
            assert!(tp.ends_with(&format!("-{flags}")), "{tp}");
        }
    }
}

#[tokio::test]
async fn a_request_that_carries_a_traceparent_keeps_it() {
    let (_exporter, _guard) = tracing_with(Sampler::AlwaysOn);
    let (b_state, b) = serve_b().await;
    let own = format!("00-{TRACE}-1111111111111111-01");

    #[resilient(timeout = "2s", backoff(initial = "1ms", max = "1ms", jitter = none), budget = false)]
    async fn propagating(c: &reqwest::Client, url: &str, tp: &str) -> Result<String, Error> {
        Ok(c.get(url)
            .header("traceparent", tp)
            .resilient()
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }
    let span = tracing::info_span!("caller");
    let r = propagating(&reqwest::Client::new(), &format!("http://{b}/b"), &own)
        .instrument(span)
        .await
        .unwrap();
    assert_eq!(r, "ok");
    assert_eq!(
        *b_state.traceparents.lock().unwrap(),
        vec![own.clone(), own]
    );
}

#[resilient(
    timeout = "2s",
    deadline = "5s",
    max_attempts = 1,
    budget = false,
    hedge(delay = "50ms")
)]
async fn hedged(c: &reqwest::Client, url: String) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[tokio::test]
async fn a_hedge_has_an_attempt_span_of_its_own_and_the_overtaken_attempt_says_so() {
    use resilience_fault_server::{Action, FaultServer, Script};
    let (exporter, _guard) = tracing_with(Sampler::AlwaysOn);
    let server = FaultServer::start(Script::sequence([Action::stall(), Action::ok()])).await;
    let c = reqwest::Client::new();
    assert_eq!(hedged(&c, server.url("/item")).await.unwrap(), 200);

    // The call and two attempts: the first, stalled, then the hedge that answered.
    let spans = finished(&exporter, 3).await;
    let names: Vec<_> = spans.iter().map(|s| s.name.to_string()).collect();
    let call = spans
        .iter()
        .find(|s| is_call(s))
        .unwrap_or_else(|| panic!("no call span: {names:?}"));
    let mut attempts: Vec<_> = spans.iter().filter(|s| s.name == "GET").collect();
    attempts.sort_by_key(|s| s.start_time);
    assert_eq!(attempts.len(), 2, "{names:?}");
    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    for (i, at) in attempts.iter().enumerate() {
        assert_eq!(at.parent_span_id, call.span_context.span_id());
        assert_eq!(at.span_context.trace_id(), call.span_context.trace_id());
        assert_eq!(
            attr(at, "resilience.attempt"),
            Some(&Value::I64(i as i64 + 1))
        );
        // Each request carries its own attempt span as the parent id.
        let tp = seen[i].header("traceparent").unwrap();
        assert_eq!(tp[36..52], at.span_context.span_id().to_string());
        assert_eq!(attr(at, "url.full"), Some(&s(&server.url("/item"))));
    }
    let (first, hedge) = (attempts[0], attempts[1]);
    assert_eq!(attr(first, "resilience.decision"), Some(&s("cancelled")));
    assert_eq!(
        attr(first, "resilience.reason"),
        Some(&s("another attempt answered first"))
    );
    assert_eq!(attr(first, "http.response.status_code"), None);
    assert_eq!(attr(hedge, "resilience.decision"), Some(&s("success")));
    assert_eq!(
        attr(hedge, "http.response.status_code"),
        Some(&Value::I64(200))
    );
}

/// The first attempt is reset while its hedge still runs: its span says how it failed, as an
/// error; the hedge's answer is the call's.
#[tokio::test]
async fn a_hedged_attempt_that_failed_while_another_ran_is_traced_as_an_error() {
    use resilience_fault_server::{Action, FaultServer, Script};
    let (exporter, _guard) = tracing_with(Sampler::AlwaysOn);
    let server = FaultServer::start(Script::sequence([
        Action::reset().after(std::time::Duration::from_millis(150)),
        Action::ok().after(std::time::Duration::from_millis(300)),
    ]))
    .await;
    let c = reqwest::Client::new();
    assert_eq!(hedged(&c, server.url("/item")).await.unwrap(), 200);
    let spans = finished(&exporter, 3).await;
    let mut attempts: Vec<_> = spans.iter().filter(|s| s.name == "GET").collect();
    attempts.sort_by_key(|s| s.start_time);
    assert_eq!(attempts.len(), 2);
    let first = attempts[0];
    assert_eq!(attr(first, "resilience.decision"), Some(&s("failed")));
    assert_eq!(attr(first, "resilience.class"), Some(&s("reset")));
    assert_eq!(attr(first, "error.type"), Some(&s("reset")));
    assert!(
        matches!(first.status, opentelemetry::trace::Status::Error { .. }),
        "{:?}",
        first.status
    );
    assert_eq!(
        attr(attempts[1], "resilience.decision"),
        Some(&s("success"))
    );
}

#[resilient(
    timeout = "300ms",
    max_attempts = 1,
    budget = false,
    hedge(delay = "50ms")
)]
async fn hedged_briefly(c: &reqwest::Client, url: String) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// The first attempt is answered 404 while its hedge hangs to its timeout: the call ends on
/// the 404, and each span says what its own attempt got (the hedge's said 404, with the
/// answer's class, and no span told of its timeout).
#[tokio::test]
async fn a_hedge_that_timed_out_after_its_siblings_answer_is_traced_with_its_own_timeout() {
    use resilience_fault_server::{Action, FaultServer, Script};
    let (exporter, _guard) = tracing_with(Sampler::AlwaysOn);
    let server = FaultServer::start(Script::sequence([
        Action::status(404).after(Duration::from_millis(100)),
        Action::stall(),
    ]))
    .await;
    let c = reqwest::Client::new();
    let e = hedged_briefly(&c, server.url("/item")).await.unwrap_err();
    assert_eq!(e.http_status(), Some(404), "{e}");
    let spans = finished(&exporter, 3).await;
    let mut attempts: Vec<_> = spans.iter().filter(|s| s.name == "GET").collect();
    attempts.sort_by_key(|s| s.start_time);
    assert_eq!(attempts.len(), 2);
    let (first, hedge) = (attempts[0], attempts[1]);
    assert_eq!(
        attr(first, "http.response.status_code"),
        Some(&Value::I64(404))
    );
    // The call's decision is on the span of the attempt it acted on.
    assert_eq!(attr(first, "resilience.decision"), Some(&s("give up")));
    assert_eq!(attr(hedge, "resilience.class"), Some(&s("timeout")));
    assert_eq!(attr(hedge, "http.response.status_code"), None);
    assert_eq!(attr(hedge, "resilience.decision"), Some(&s("failed")));
}

#[resilient(method = GET, timeout = "2s", max_attempts = 1, budget = false)]
async fn outer_of_nested(c: &reqwest::Client, url: String) -> Result<u16, Error> {
    hedged_briefly(c, url).await
}

/// `depth` reaches OpenTelemetry as a number, as the attempt spans' numbers do: a filter on
/// `depth = 0` matches (a string "0" does not).
#[tokio::test]
async fn the_call_spans_depth_is_exported_as_a_number() {
    use resilience_fault_server::{Action, FaultServer, Script};
    let (exporter, _guard) = tracing_with(Sampler::AlwaysOn);
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let c = reqwest::Client::new();
    assert_eq!(outer_of_nested(&c, server.url("/item")).await.unwrap(), 200);
    let spans = finished(&exporter, 4).await;
    let mut depths: Vec<_> = spans
        .iter()
        .filter(|s| is_call(s))
        .map(|s| attr(s, "depth").cloned())
        .collect();
    depths.sort_by_key(|d| format!("{d:?}"));
    assert_eq!(depths, [Some(Value::I64(0)), Some(Value::I64(1))]);
}

#[resilient(
    method = GET,
    timeout = "2s",
    deadline = "5s",
    max_attempts = 1,
    budget = false,
    hedge(delay = "50ms")
)]
async fn hedged_count(c: &reqwest::Client, url: String) -> Result<u16, Error> {
    let text = c.get(url).send().await?.error_for_status()?.text().await?;
    text.trim().parse().map_err(Error::call)
}

/// The first attempt is answered 200 with a body its own code cannot read (its error, not a
/// transport failure or a status) while its hedge still runs: its span says it failed, as a
/// permanent failure, and as an error, as any failed attempt's does.
#[tokio::test]
async fn a_hedged_attempt_whose_body_failed_while_another_ran_is_traced_as_an_error() {
    use resilience_fault_server::{Action, FaultServer, Script};
    let (exporter, _guard) = tracing_with(Sampler::AlwaysOn);
    let server = FaultServer::start(Script::sequence([
        Action::status(200)
            .body("not a number")
            .after(std::time::Duration::from_millis(150)),
        Action::status(200)
            .body("7")
            .after(std::time::Duration::from_millis(300)),
    ]))
    .await;
    let c = reqwest::Client::new();
    assert_eq!(hedged_count(&c, server.url("/count")).await.unwrap(), 7);
    let spans = finished(&exporter, 3).await;
    let mut attempts: Vec<_> = spans.iter().filter(|s| s.name == "GET").collect();
    attempts.sort_by_key(|s| s.start_time);
    assert_eq!(attempts.len(), 2);
    let first = attempts[0];
    assert_eq!(attr(first, "resilience.decision"), Some(&s("failed")));
    assert_eq!(attr(first, "resilience.class"), Some(&s("permanent")));
    assert!(attr(first, "error.type").is_some(), "{first:?}");
    assert!(
        matches!(first.status, opentelemetry::trace::Status::Error { .. }),
        "{:?}",
        first.status
    );
}

#[resilient(method = GET, timeout = "2s", max_attempts = 1, budget = false)]
async fn purge(c: &reqwest::Client, url: String) -> Result<u16, Error> {
    let purge = reqwest::Method::from_bytes(b"PURGE").unwrap();
    let status = c.request(purge, &url).send().await?.status().as_u16();
    // A second request in the same attempt: the span keeps the first one's.
    c.get(format!("{url}/after")).send().await?;
    Ok(status)
}

/// The attempt span is named after the method actually sent, as the conventions write it: a
/// method they do not know is `HTTP`, `_OTHER`, with the method sent as the original. Its
/// first request describes it, each attribute once; its status is its last response's, the
/// one its outcome was judged by, once.
#[tokio::test]
async fn the_attempt_span_names_the_method_sent() {
    use resilience_fault_server::{Action, FaultServer, Script};
    let (exporter, _guard) = tracing_with(Sampler::AlwaysOn);
    let server = FaultServer::start(Script::sequence([Action::ok(), Action::status(202)])).await;
    assert_eq!(
        purge(&reqwest::Client::new(), server.url("/cache"))
            .await
            .unwrap(),
        200
    );
    let spans = finished(&exporter, 2).await;
    let names: Vec<_> = spans.iter().map(|s| s.name.to_string()).collect();
    let attempt = spans
        .iter()
        .find(|s| !is_call(s))
        .unwrap_or_else(|| panic!("no attempt span: {names:?}"));
    assert_eq!(attempt.name, "HTTP", "{names:?}");
    assert_eq!(attr(attempt, "http.request.method"), Some(&s("_OTHER")));
    let methods = attempt
        .attributes
        .iter()
        .filter(|kv| kv.key.as_str() == "http.request.method")
        .count();
    assert_eq!(methods, 1, "{:?}", attempt.attributes);
    let urls: Vec<_> = attempt
        .attributes
        .iter()
        .filter(|kv| kv.key.as_str() == "url.full")
        .map(|kv| kv.value.to_string())
        .collect();
    assert_eq!(urls, [server.url("/cache")], "{:?}", attempt.attributes);
    let statuses: Vec<_> = attempt
        .attributes
        .iter()
        .filter(|kv| kv.key.as_str() == "http.response.status_code")
        .map(|kv| kv.value.clone())
        .collect();
    assert_eq!(statuses, [Value::I64(202)], "{:?}", attempt.attributes);
    assert_eq!(
        attr(attempt, "http.request.method_original"),
        Some(&s("PURGE"))
    );
}

#[resilient(timeout = "2s", max_attempts = 1, budget = false)]
async fn found(c: &reqwest::Client, url: String) -> Result<bool, Error> {
    // A 404 the body takes for an answer ("not there"): the call succeeds.
    Ok(c.get(&url).send().await?.status() != reqwest::StatusCode::NOT_FOUND)
}

/// A client span answered 4xx is an error per the conventions, even when the body took the
/// answer for a success: `error.type` is the status and the span's status is `Error`.
#[tokio::test]
async fn an_attempt_answered_4xx_is_an_error_span_even_when_the_body_succeeds() {
    use resilience_fault_server::{Action, FaultServer, Script};
    let (exporter, _guard) = tracing_with(Sampler::AlwaysOn);
    let server = FaultServer::start(Script::always(Action::status(404))).await;
    assert!(
        !found(&reqwest::Client::new(), server.url("/x"))
            .await
            .unwrap()
    );
    let spans = finished(&exporter, 2).await;
    let attempt = spans
        .iter()
        .find(|s| s.name == "GET")
        .expect("attempt span");
    assert_eq!(attr(attempt, "error.type"), Some(&s("404")));
    assert_eq!(attr(attempt, "resilience.decision"), Some(&s("success")));
    assert!(
        matches!(attempt.status, opentelemetry::trace::Status::Error { .. }),
        "{:?}",
        attempt.status
    );
}

#[resilient(
    timeout = "2s",
    max_attempts = 3,
    backoff(initial = "100ms", max = "100ms", jitter = none),
    breaker = { name = "otel_refused_retry", failure_rate = 1.0, min_calls = 2, window = 2, open_for = "1h" },
    budget = false
)]
async fn guarded_fetch(c: &reqwest::Client, url: String) -> Result<String, Error> {
    Ok(c.get(&url).send().await?.error_for_status()?.text().await?)
}

/// The call's own span says how the call ended (`resilience.outcome`, the metrics' outcome),
/// and is an error span when the call failed: also when its last retry was refused by the
/// breaker its failures opened, which ends no attempt span (the last one says `retry`).
#[tokio::test]
async fn the_call_span_says_how_the_call_ended() {
    use resilience_fault_server::{Action, FaultServer, Script};
    let (exporter, _guard) = tracing_with(Sampler::AlwaysOn);
    let c = reqwest::Client::new();
    let ok = FaultServer::start(Script::always(Action::ok())).await;
    guarded_fetch(&c, ok.url("/x")).await.unwrap();
    let call = |spans: &[SpanData]| {
        spans
            .iter()
            .find(|s| is_call(s))
            .cloned()
            .expect("the call span")
    };
    let first = call(&finished(&exporter, 2).await);
    assert_eq!(
        attr(&first, "resilience.outcome"),
        Some(&s("successful_without_retry"))
    );
    assert!(
        !matches!(first.status, opentelemetry::trace::Status::Error { .. }),
        "{:?}",
        first.status
    );
    exporter.reset();

    let down = FaultServer::start(Script::always(Action::status(503))).await;
    let e = guarded_fetch(&c, down.url("/x")).await.unwrap_err();
    assert_eq!(e.kind(), resilience_runtime::ErrorKind::CircuitOpen, "{e}");
    let spans = finished(&exporter, 3).await;
    let failed = call(&spans);
    assert_eq!(
        attr(&failed, "resilience.outcome"),
        Some(&s("rejected_breaker"))
    );
    assert!(
        matches!(failed.status, opentelemetry::trace::Status::Error { .. }),
        "{:?}",
        failed.status
    );
    let mut attempts: Vec<_> = spans.iter().filter(|s| s.name == "GET").collect();
    attempts.sort_by_key(|s| s.start_time);
    assert_eq!(attempts.len(), 2);
    assert_eq!(attr(attempts[1], "resilience.decision"), Some(&s("retry")));
}

/// A handler behind `IdempotencyLayer` runs in a task of its own (detached from the
/// connection); its spans and its calls' spans stay in the request's trace, under the server
/// span a middleware outside the layer opened (what `TraceLayer` does).
#[tokio::test]
async fn a_handler_behind_the_idempotency_layer_stays_in_the_requests_trace() {
    use resilience_runtime::server::{IdempotencyLayer, MemoryStore};

    let (exporter, _guard) = tracing_with(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
    let (_, b) = serve_b().await;
    async fn charge(State(b_url): State<String>) -> String {
        tracing::info_span!("charge.handler").in_scope(|| tracing::info!("charging"));
        call_b(&reqwest::Client::new(), &b_url)
            .await
            .unwrap_or_else(|e| format!("error: {e}"))
    }
    async fn server_span(
        req: axum::extract::Request,
        next: axum::middleware::Next,
    ) -> axum::response::Response {
        let span = tracing::info_span!("a.request", otel.kind = "server");
        let _ = span.set_parent(incoming(req.headers()));
        next.run(req).instrument(span).await
    }
    let a = serve(
        axum::Router::new()
            .route("/charges", axum::routing::post(charge))
            .with_state(format!("http://{b}/b"))
            .layer(IdempotencyLayer::new(MemoryStore::default()))
            .layer(axum::middleware::from_fn(server_span)),
    )
    .await;
    let body = reqwest::Client::new()
        .post(format!("http://{a}/charges"))
        .header("idempotency-key", "order-8")
        .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "ok");

    // a.request, charge.handler, the call, two attempts, two b.handle.
    let (spans, _) = finished_in_trace(&exporter, 7).await;
    let one = |n: &str| spans.iter().find(|s| s.name == n).expect(n);
    let request = one("a.request");
    assert_eq!(
        one("charge.handler").parent_span_id,
        request.span_context.span_id()
    );
    assert_eq!(
        spans
            .iter()
            .find(|s| is_call(s))
            .expect("the call span")
            .parent_span_id,
        request.span_context.span_id()
    );
}

/// A call its caller stops waiting for (a `timeout` around it, a client gone): its attempt's
/// span ends with the decision `cancelled`, and the call's span with it.
#[tokio::test]
async fn a_call_given_up_by_its_caller_ends_its_attempt_span_cancelled() {
    use resilience_fault_server::{Action, FaultServer, Script};
    let (exporter, _guard) = tracing_with(Sampler::AlwaysOn);
    let server = FaultServer::start(Script::always(Action::stall())).await;
    let c = reqwest::Client::new();
    let gave_up =
        tokio::time::timeout(Duration::from_millis(100), call_b(&c, &server.url("/b"))).await;
    assert!(gave_up.is_err(), "the stalled call answered");

    let spans = finished(&exporter, 2).await;
    let names: Vec<_> = spans.iter().map(|s| s.name.to_string()).collect();
    let attempt = spans
        .iter()
        .find(|s| s.name == "GET")
        .unwrap_or_else(|| panic!("no attempt span: {names:?}"));
    assert_eq!(
        attr(attempt, "resilience.decision"),
        Some(&s("cancelled")),
        "{names:?}"
    );
    assert!(
        spans.iter().any(is_call),
        "the call's span ended too: {names:?}"
    );
}

/// A lookup answered, then work of the body's own that takes long.
#[resilient(method = GET, timeout = "5s", max_attempts = 1, budget = false)]
async fn lookup_then_work(c: &reqwest::Client, ok: &str) -> Result<String, Error> {
    let found = c.get(ok).send().await?.error_for_status()?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(found.text().await?)
}

/// A call its caller stops waiting for after a response arrived (its body busy with work of
/// its own): the cancelled attempt's span still carries that response's status, once. (Had a
/// later request been in flight, the attempt's last request would have had no response.)
#[tokio::test]
async fn a_cancelled_attempt_keeps_the_status_it_received() {
    use resilience_fault_server::{Action, FaultServer, Script};
    let (exporter, _guard) = tracing_with(Sampler::AlwaysOn);
    let ok = FaultServer::start(Script::always(Action::status(203))).await;
    let c = reqwest::Client::new();
    let ok = ok.url("/a");
    let call = lookup_then_work(&c, &ok);
    let gave_up = tokio::time::timeout(Duration::from_millis(200), call).await;
    assert!(gave_up.is_err(), "the stalled call answered");

    let spans = finished(&exporter, 2).await;
    let names: Vec<_> = spans.iter().map(|s| s.name.to_string()).collect();
    let attempt = spans
        .iter()
        .find(|s| s.name == "GET")
        .unwrap_or_else(|| panic!("no attempt span: {names:?}"));
    assert_eq!(attr(attempt, "resilience.decision"), Some(&s("cancelled")));
    let statuses: Vec<_> = attempt
        .attributes
        .iter()
        .filter(|kv| kv.key.as_str() == "http.response.status_code")
        .map(|kv| kv.value.clone())
        .collect();
    assert_eq!(statuses, [Value::I64(203)], "{:?}", attempt.attributes);
}

/// Through the SDK's W3C propagator (which writes `tracestate` even when the trace has none):
/// a `tracestate` the request carries by hand goes out as it was, and a request without one
/// sends none, not an empty field.
#[tokio::test]
async fn a_tracestate_set_by_hand_is_kept_and_none_goes_out_empty() {
    let (_exporter, _guard) = tracing_with(Sampler::AlwaysOn);
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let b = serve(
        axum::Router::new()
            .route(
                "/",
                get(
                    |State(seen): State<Arc<Mutex<Vec<Option<String>>>>>, h: HeaderMap| async move {
                        let state = h.get("tracestate").map(|v| v.to_str().unwrap().to_owned());
                        seen.lock().unwrap().push(state);
                        "ok"
                    },
                ),
            )
            .with_state(seen.clone()),
    )
    .await;

    #[resilient(timeout = "2s", max_attempts = 1)]
    async fn with_state(
        c: &reqwest::Client,
        url: &str,
        state: Option<&str>,
    ) -> Result<String, Error> {
        let mut req = c.get(url);
        if let Some(s) = state {
            req = req.header("tracestate", s);
        }
        Ok(req.send().await?.text().await?)
    }
    let c = reqwest::Client::new();
    let url = format!("http://{b}/");
    let span = tracing::info_span!("caller");
    async {
        with_state(&c, &url, Some("congo=t61rcWkgMzE"))
            .await
            .unwrap();
        with_state(&c, &url, None).await.unwrap();
    }
    .instrument(span)
    .await;
    assert_eq!(
        *seen.lock().unwrap(),
        vec![Some("congo=t61rcWkgMzE".to_owned()), None]
    );
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    idempotency_key = auto,
    hedge(delay = "200ms"),
    backoff(initial = "100ms", max = "100ms", jitter = none),
    budget = false
)]
async fn hedged_charge(c: &reqwest::Client, url: String) -> Result<String, Error> {
    Ok(c.post(url)
        .body("amount=1")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// A keyed hedged round whose hedge is answered 409 "still in progress" and whose first
/// attempt then times out: the call asks for the replay, and the attempt that timed out is
/// traced as a timeout (its class, no status), not as the 409 its sibling got.
#[tokio::test(start_paused = true)]
async fn an_attempt_that_timed_out_beside_a_409_is_traced_as_the_timeout() {
    use resilience_runtime::server::{IdempotencyLayer, MemoryStore};
    let (exporter, _guard) = tracing_with(Sampler::AlwaysOn);
    let charges = Arc::new(AtomicU32::new(0));
    let app = axum::Router::new()
        .route(
            "/charges",
            axum::routing::post(|State(charges): State<Arc<AtomicU32>>| async move {
                let n = charges.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(2500)).await;
                (StatusCode::CREATED, format!("charge {n}"))
            }),
        )
        .with_state(charges.clone())
        .layer(IdempotencyLayer::new(MemoryStore::default()));
    let addr = serve(app).await;
    let got = hedged_charge(&reqwest::Client::new(), format!("http://{addr}/charges")).await;
    assert_eq!(got.expect("the replay"), "charge 1");
    assert_eq!(charges.load(Ordering::SeqCst), 1);
    let spans = exporter.get_finished_spans().unwrap();
    let attempts: Vec<&SpanData> = spans.iter().filter(|s| s.name == "POST").collect();
    let asked = attempts
        .iter()
        .find(|sp| attr(sp, "resilience.decision") == Some(&s("ask")))
        .unwrap_or_else(|| panic!("an attempt asked for the replay: {attempts:#?}"));
    assert_eq!(
        attr(asked, "resilience.class"),
        Some(&s("timeout")),
        "{asked:#?}"
    );
    assert_eq!(attr(asked, "error.type"), Some(&s("timeout")), "{asked:#?}");
    assert_eq!(attr(asked, "http.response.status_code"), None, "{asked:#?}");
}

#[resilient(method = GET, timeout = "2s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn two_requests(c: &reqwest::Client, url: String) -> Result<u16, Error> {
    c.get(format!("{url}/a")).send().await?;
    Ok(c.get(format!("{url}/b"))
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// `http.request.resend_count` is the attempt's number − 1, however many requests it sends:
/// one value on the second attempt's span, though it sent two.
#[tokio::test]
async fn resend_count_is_the_attempts_whatever_its_requests() {
    use resilience_fault_server::{Action, FaultServer, Script};
    let (exporter, _guard) = tracing_with(Sampler::AlwaysOn);
    let b = std::sync::Arc::new(AtomicU32::new(0));
    let seen = b.clone();
    let server = FaultServer::start(Script::dynamic(move |s| match s.path.as_str() {
        "/b" if seen.fetch_add(1, Ordering::SeqCst) == 0 => Action::status(503),
        _ => Action::ok(),
    }))
    .await;
    assert_eq!(
        two_requests(&reqwest::Client::new(), format!("http://{}", server.addr()))
            .await
            .unwrap(),
        200
    );
    let spans = finished(&exporter, 3).await;
    let second = spans
        .iter()
        .find(|sp| attr(sp, "resilience.attempt") == Some(&Value::I64(2)))
        .expect("the second attempt's span");
    let counts: Vec<_> = second
        .attributes
        .iter()
        .filter(|kv| kv.key.as_str() == "http.request.resend_count")
        .map(|kv| kv.value.clone())
        .collect();
    assert_eq!(counts, [Value::I64(1)], "{:?}", second.attributes);
}
