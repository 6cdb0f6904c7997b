//! With the `metrics` feature: what a Prometheus recorder installed in the service receives,
//! read back from its text exposition. Calls against the loopback fault server, one per
//! outcome; the pull API (`resilience_runtime::metrics`) counts the same calls.

use std::time::Duration;

mod support;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use resilience_fault_server::{Action, FaultServer, Script};
use resilience_runtime::{Error, RequestBuilderExt as _, resilient, telemetry};

async fn get(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url)
        .resilient()
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[resilient(method = GET, timeout = "2s", backoff(initial = "1ms", max = "1ms", jitter = none), budget = false)]
async fn plain(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    get(c, url).await
}

#[resilient(
    method = GET,
    timeout = "2s",
    max_attempts = 1,
    breaker = { name = "m_breaker", failure_rate = 0.5, min_calls = 2, window = 2, open_for = "60s", half_open_calls = 1 },
    budget = false,
)]
async fn broken(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    get(c, url).await
}

#[resilient(method = GET, timeout = "2s", backoff(initial = "1ms", max = "1ms", jitter = none), budget = { name = "m_budget", ratio = 0.0, min_per_sec = 0 })]
async fn budgeted(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    get(c, url).await
}

#[resilient(method = GET, timeout = "2s", bulkhead = { name = "m_bulkhead", max_concurrent = 1 }, budget = false)]
async fn bulkheaded(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    get(c, url).await
}

/// Under the same bulkhead as `bulkheaded`, which it calls (in its slot), then works on.
#[resilient(method = GET, timeout = "2s", max_attempts = 1, bulkhead = { name = "m_bulkhead", max_concurrent = 1 }, budget = false)]
async fn bulkheaded_outer(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    let got = bulkheaded(c, url).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(got)
}

#[resilient(method = GET, timeout = "2s", rate_limit = { rate = 1, per = "1m", burst = 1 }, budget = false)]
async fn limited(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    get(c, url).await
}

#[resilient(method = GET, timeout = "2s", max_attempts = 1, concurrency_limit = { name = "m_adaptive", initial = 2, min = 1, max = 4, latency = "100ms" }, budget = false)]
async fn adapted(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    get(c, url).await
}

/// Its method is chosen at run time: neither declared nor inferred.
#[resilient(timeout = "2s", max_attempts = 1, budget = false)]
async fn any_method(c: &reqwest::Client, m: reqwest::Method, url: &str) -> Result<String, Error> {
    Ok(c.request(m, url).send().await?.text().await?)
}

/// Its body returns the nested call's refusal: an attempt of class `rejected`.
#[resilient(method = GET, timeout = "2s", max_attempts = 1, budget = false)]
async fn over_broken(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    broken(c, url).await
}

fn recorder() -> metrics_exporter_prometheus::PrometheusRecorder {
    PrometheusBuilder::new()
        .with_recommended_naming(true)
        .set_buckets(&telemetry::HTTP_DURATION_BUCKETS)
        .unwrap()
        .build_recorder()
}

/// The value of the sample whose line starts with `name{` and holds every label in `labels`.
fn sample(handle: &PrometheusHandle, name: &str, labels: &[&str]) -> Option<f64> {
    let text = handle.render();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|lab| l.contains(lab)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn every_outcome_class_and_state_reaches_the_installed_recorder() {
    let recorder = recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    telemetry::describe_metrics();
    let c = reqwest::Client::new();

    let ok = FaultServer::start(Script::always(Action::ok())).await;
    let once = FaultServer::start(vec![Action::status(503)]).await;
    let gone = FaultServer::start(Script::always(Action::status(404))).await;
    let down = FaultServer::start(Script::always(Action::status(503))).await;
    plain(&c, &ok.url("/")).await.unwrap();
    plain(&c, &once.url("/")).await.unwrap();
    plain(&c, &gone.url("/")).await.unwrap_err();
    plain(&c, &down.url("/")).await.unwrap_err(); // 3 attempts, all 503

    // An inline policy goes by its function's path.
    let p = r#"policy="metrics::plain""#;
    let calls = |outcome: &str| {
        sample(
            &handle,
            "resilience_client_calls_total",
            &[p, &format!(r#"outcome="{outcome}""#)],
        )
    };
    assert_eq!(calls("successful_without_retry"), Some(1.0));
    assert_eq!(calls("successful_with_retry"), Some(1.0));
    assert_eq!(calls("failed_without_retry"), Some(1.0));
    assert_eq!(calls("failed_with_retry"), Some(1.0));
    let attempts = |class: &str| {
        sample(
            &handle,
            "resilience_client_attempts_total",
            &[p, &format!(r#"class="{class}""#)],
        )
    };
    // ok: the first call and the second's retry; status: 503 once, 404 once, 503 three times.
    assert_eq!(attempts("ok"), Some(2.0));
    assert_eq!(
        attempts("status").unwrap_or(0.0) + attempts("permanent").unwrap_or(0.0),
        5.0
    );
    let retries = sample(
        &handle,
        "resilience_client_retries_total",
        &[p, r#"class="status""#],
    );
    assert_eq!(retries, Some(3.0), "503 once, then 503 twice");
    let function = r#"function="metrics::plain""#;
    let attempt_count = sample(
        &handle,
        "http_client_request_duration_seconds_count",
        &[p, function, r#"class="ok""#, r#"http_request_method="GET""#],
    );
    assert_eq!(attempt_count, Some(2.0));
    // A policy of no known method is labelled as the attempt span names it: `_OTHER`.
    any_method(&c, reqwest::Method::GET, &ok.url("/"))
        .await
        .unwrap();
    let other = sample(
        &handle,
        "http_client_request_duration_seconds_count",
        &[
            r#"function="metrics::any_method""#,
            r#"http_request_method="_OTHER""#,
        ],
    );
    assert_eq!(other, Some(1.0));
    let call_count = sample(
        &handle,
        "resilience_client_call_duration_seconds_count",
        &[p, r#"outcome="failed_with_retry""#],
    );
    assert_eq!(call_count, Some(1.0));

    // The pull API counts the same calls.
    let pulled = resilience_runtime::metrics::policy("metrics::plain").unwrap();
    assert_eq!(
        (
            pulled.successful_without_retry,
            pulled.successful_with_retry,
            pulled.failed_without_retry,
            pulled.failed_with_retry,
            pulled.retries,
        ),
        (1, 1, 1, 1, 3)
    );
    // Every one of them ended: none is counted as cancelled.
    assert_eq!(pulled.cancelled, 0);
    assert_eq!(calls("cancelled"), None);

    // Breaker: two failures open it, the third call is refused.
    for _ in 0..2 {
        broken(&c, &down.url("/")).await.unwrap_err();
    }
    let before = resilience_runtime::metrics::policy("metrics::broken").unwrap();
    let refused = broken(&c, &down.url("/")).await.unwrap_err();
    assert_eq!(refused.kind(), resilience_runtime::ErrorKind::CircuitOpen);
    // The pull API counts the refusal as refused by the breaker and as failed without retry.
    let after = resilience_runtime::metrics::policy("metrics::broken").unwrap();
    assert_eq!(
        (
            after.rejected_breaker - before.rejected_breaker,
            after.failed_without_retry - before.failed_without_retry,
            after.failed_with_retry - before.failed_with_retry,
        ),
        (1, 1, 0)
    );
    let b = r#"breaker="m_breaker""#;
    assert_eq!(
        sample(
            &handle,
            "resilience_client_calls_total",
            &[function_of("broken"), r#"outcome="rejected_breaker""#]
        ),
        Some(1.0)
    );
    // A caller whose body returns that refusal: its attempt ended `rejected`.
    let e = over_broken(&c, &down.url("/")).await.unwrap_err();
    assert_eq!(e.kind(), resilience_runtime::ErrorKind::CircuitOpen);
    assert_eq!(
        sample(
            &handle,
            "resilience_client_attempts_total",
            &[function_of("over_broken"), r#"class="rejected""#]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&handle, "resilience_breaker_state", &[b]),
        Some(2.0),
        "open"
    );
    assert_eq!(
        sample(
            &handle,
            "resilience_breaker_transitions_total",
            &[b, r#"from="closed""#, r#"to="open""#]
        ),
        Some(1.0)
    );

    // Budget: no retry allowed at all.
    let e = budgeted(&c, &down.url("/")).await.unwrap_err();
    assert_eq!(e.kind(), resilience_runtime::ErrorKind::BudgetExhausted);
    assert_eq!(
        sample(
            &handle,
            "resilience_client_calls_total",
            &[function_of("budgeted"), r#"outcome="rejected_budget""#]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &handle,
            "resilience_budget_available",
            &[r#"budget="m_budget""#]
        ),
        Some(0.0)
    );

    // Bulkhead: one slot, held by a stalled call while a second one asks.
    let stall = FaultServer::start(vec![Action::ok().after(Duration::from_millis(300))]).await;
    let stall_url = stall.url("/");
    let (first, second) = tokio::join!(bulkheaded(&c, &stall_url), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let in_flight = sample(
            &handle,
            "resilience_bulkhead_in_flight",
            &[r#"bulkhead="m_bulkhead""#],
        );
        let refused = bulkheaded(&c, &stall_url).await;
        // The refused call never held a slot: the gauge still counts the first call's.
        let after_refusal = sample(
            &handle,
            "resilience_bulkhead_in_flight",
            &[r#"bulkhead="m_bulkhead""#],
        );
        (refused, in_flight, after_refusal)
    });
    first.unwrap();
    assert_eq!(
        second.0.unwrap_err().kind(),
        resilience_runtime::ErrorKind::BulkheadFull
    );
    assert_eq!(second.1, Some(1.0), "in flight while the first call runs");
    assert_eq!(second.2, Some(1.0), "still in flight after a refusal");
    assert_eq!(
        sample(
            &handle,
            "resilience_client_calls_total",
            &[function_of("bulkheaded"), r#"outcome="rejected_bulkhead""#]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &handle,
            "resilience_bulkhead_in_flight",
            &[r#"bulkhead="m_bulkhead""#],
        ),
        Some(0.0)
    );

    // A nested call run in its caller's slot ends without giving a slot back: the gauge still
    // counts the caller's.
    let quick = FaultServer::start(Script::always(Action::ok())).await;
    let quick_url = quick.url("/");
    let (outer, in_flight) = tokio::join!(bulkheaded_outer(&c, &quick_url), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        sample(
            &handle,
            "resilience_bulkhead_in_flight",
            &[r#"bulkhead="m_bulkhead""#],
        )
    });
    outer.unwrap();
    assert_eq!(
        in_flight,
        Some(1.0),
        "the caller's slot, after the nested call ended"
    );

    // Rate limit: one permit a minute; the second call is refused before any attempt.
    let ok = FaultServer::start(Script::always(Action::ok())).await;
    limited(&c, &ok.url("/")).await.unwrap();
    assert_eq!(
        limited(&c, &ok.url("/")).await.unwrap_err().kind(),
        resilience_runtime::ErrorKind::RateLimited
    );
    assert_eq!(
        sample(
            &handle,
            "resilience_client_calls_total",
            &[function_of("limited"), r#"outcome="rejected_rate_limit""#]
        ),
        Some(1.0)
    );
    // Refused calls have a duration too (the wait they spent, here none).
    for (f, outcome) in [
        ("bulkheaded", "rejected_bulkhead"),
        ("limited", "rejected_rate_limit"),
    ] {
        assert_eq!(
            sample(
                &handle,
                "resilience_client_call_duration_seconds_count",
                &[function_of(f), &format!(r#"outcome="{outcome}""#)]
            ),
            Some(1.0),
            "{f}"
        );
    }

    // Adaptive concurrency limit: a 503 lowers the limit from 2 to 1.8; the gauges follow.
    let down_url = down.url("/");
    let (first, (in_flight, limit)) = tokio::join!(adapted(&c, &down_url), async {
        tokio::task::yield_now().await;
        let of = |name: &str| sample(&handle, name, &[r#"concurrency_limit="m_adaptive""#]);
        (
            of("resilience_concurrency_limit_in_flight"),
            of("resilience_concurrency_limit_limit"),
        )
    });
    first.unwrap_err();
    assert_eq!(in_flight, Some(1.0), "in flight while the call runs");
    // The limit's series is there from the first slot taken, before the limit ever moved.
    assert_eq!(
        limit,
        Some(2.0),
        "the limit at `initial` while the call runs"
    );
    let adaptive = |name: &str| sample(&handle, name, &[r#"concurrency_limit="m_adaptive""#]);
    assert_eq!(adaptive("resilience_concurrency_limit_limit"), Some(1.8));
    assert_eq!(
        adaptive("resilience_concurrency_limit_in_flight"),
        Some(0.0)
    );

    // Every metric of the table is there, with its help text.
    let text = handle.render();
    for name in [
        "resilience_client_calls_total",
        "resilience_client_call_duration_seconds",
        "resilience_client_attempts_total",
        "http_client_request_duration_seconds",
        "resilience_client_retries_total",
        "resilience_breaker_state",
        "resilience_breaker_transitions_total",
        "resilience_budget_available",
        "resilience_bulkhead_in_flight",
        "resilience_concurrency_limit_limit",
        "resilience_concurrency_limit_in_flight",
    ] {
        assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
    }
}

#[resilient(method = GET, timeout = "2s", max_attempts = 1, budget = false, hedge(delay = "50ms", max = 2))]
async fn hedged(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[tokio::test]
async fn hedges_are_counted_won_and_lost() {
    let recorder = recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    telemetry::describe_metrics();
    let c = reqwest::Client::new();
    // The first request and the first hedge stall; the second hedge answers: one won, one lost.
    let server = FaultServer::start(Script::sequence([
        Action::stall(),
        Action::stall(),
        Action::ok(),
    ]))
    .await;
    hedged(&c, &server.url("/")).await.unwrap();
    assert_eq!(server.requests().len(), 3);
    let hedges = |outcome: &str| {
        sample(
            &handle,
            "resilience_client_hedges_total",
            &[function_of("hedged"), &format!(r#"outcome="{outcome}""#)],
        )
    };
    assert_eq!((hedges("won"), hedges("lost")), (Some(1.0), Some(1.0)));
    // The attempts counted are the one the call acted on: the hedge that answered.
    let ok = sample(
        &handle,
        "resilience_client_attempts_total",
        &[function_of("hedged"), r#"class="ok""#],
    );
    assert_eq!(ok, Some(1.0));
    // Hedges are not retries: the call's outcome, the retries metric and the pull API agree.
    let outcome = |o: &str| {
        sample(
            &handle,
            "resilience_client_calls_total",
            &[function_of("hedged"), &format!(r#"outcome="{o}""#)],
        )
    };
    assert_eq!(outcome("successful_without_retry"), Some(1.0));
    assert_eq!(outcome("successful_with_retry").unwrap_or(0.0), 0.0);
    let text = handle.render();
    let retried: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("resilience_client_retries_total{") && l.contains(function_of("hedged"))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(retried, 0.0, "{text}");
    let pulled = resilience_runtime::metrics::policy("metrics::hedged").unwrap();
    assert_eq!((pulled.successful_without_retry, pulled.retries), (1, 0));
    assert!(
        handle
            .render()
            .contains("# HELP resilience_client_hedges_total Hedges sent"),
        "{}",
        handle.render()
    );
}

async fn cached_reply(_c: &reqwest::Client, _url: &str) -> Result<String, Error> {
    Ok("cached".into())
}

#[resilient(method = GET, timeout = "1s", max_attempts = 1, budget = false, fallback = cached_reply)]
async fn answered_from_cache(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[resilient(timeout = "1s", max_attempts = 1, budget = false, idempotency_key = auto, fallback = cached_reply)]
async fn charged_or_cached(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.post(url)
        .body("9.99")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// Calls answered by their fallback are counted (`called`), and so are those whose fallback
/// was withheld because a keyed request may have been carried out (`withheld`): a fallback
/// rate on a dashboard, where only the logs told it.
#[tokio::test]
async fn fallbacks_are_counted_called_and_withheld() {
    let recorder = recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    telemetry::describe_metrics();
    let c = reqwest::Client::new();
    let down = FaultServer::start(Script::always(Action::status(503))).await;
    for _ in 0..2 {
        assert_eq!(
            answered_from_cache(&c, &down.url("/")).await.unwrap(),
            "cached"
        );
    }
    // A keyed POST answered 503 may have been carried out: its error comes back.
    assert!(charged_or_cached(&c, &down.url("/charges")).await.is_err());
    let fallbacks = |f: &str, outcome: &str| {
        sample(
            &handle,
            "resilience_client_fallbacks_total",
            &[function_of(f), &format!(r#"outcome="{outcome}""#)],
        )
    };
    assert_eq!(fallbacks("answered_from_cache", "called"), Some(2.0));
    assert_eq!(fallbacks("charged_or_cached", "withheld"), Some(1.0));
    assert_eq!(fallbacks("charged_or_cached", "called"), None);
    assert!(
        handle
            .render()
            .contains("# HELP resilience_client_fallbacks_total Calls that failed for good"),
        "{}",
        handle.render()
    );
}

#[resilient(method = GET, timeout = "2s", max_attempts = 1, budget = false, hedge(delay = "50ms", max = 2))]
async fn hedged_after_a_failure(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[tokio::test]
async fn a_hedge_that_failed_before_another_won_is_counted_lost_once() {
    let recorder = recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let c = reqwest::Client::new();
    // The first request stalls, the first hedge is reset, the second hedge answers.
    let server = FaultServer::start(Script::sequence([
        Action::stall(),
        Action::reset(),
        Action::ok(),
    ]))
    .await;
    hedged_after_a_failure(&c, &server.url("/")).await.unwrap();
    assert_eq!(server.requests().len(), 3);
    let hedges = |outcome: &str| {
        sample(
            &handle,
            "resilience_client_hedges_total",
            &[
                function_of("hedged_after_a_failure"),
                &format!(r#"outcome="{outcome}""#),
            ],
        )
    };
    assert_eq!((hedges("won"), hedges("lost")), (Some(1.0), Some(1.0)));
}

#[resilient(method = GET, timeout = "5s", max_attempts = 1, budget = false)]
async fn awaited(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[resilient(method = GET, timeout = "5s", max_attempts = 1, budget = false,
    bulkhead = { name = "m_cancel_bulkhead", max_concurrent = 1, max_wait = "10s" })]
async fn queued(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

/// A caller that stops waiting (its own timeout, here) drops the call: the call is counted with
/// the outcome `cancelled`, whether it was in an attempt or waiting for a bulkhead slot; a call
/// that ended is not.
#[tokio::test(start_paused = true)]
async fn calls_their_caller_gives_up_on_are_counted_cancelled() {
    let recorder = recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    telemetry::describe_metrics();
    let c = reqwest::Client::new();
    let slow = FaultServer::start(Script::always(Action::ok().after(Duration::from_secs(2)))).await;
    let url = slow.url("/");
    let cancelled = |f: &str| {
        sample(
            &handle,
            "resilience_client_calls_total",
            &[function_of(f), r#"outcome="cancelled""#],
        )
    };

    // In its attempt: the caller's 1 s timeout ends it before the answer.
    tokio::time::timeout(Duration::from_secs(1), awaited(&c, &url))
        .await
        .unwrap_err();
    assert_eq!(cancelled("awaited"), Some(1.0));
    let duration = sample(
        &handle,
        "resilience_client_call_duration_seconds_count",
        &[function_of("awaited"), r#"outcome="cancelled""#],
    );
    assert_eq!(duration, Some(1.0));
    // A call that ends (after 2 s) is counted by its outcome, not as cancelled.
    awaited(&c, &url).await.unwrap();
    assert_eq!(cancelled("awaited"), Some(1.0));
    let pulled = resilience_runtime::metrics::policy("metrics::awaited").unwrap();
    assert_eq!((pulled.cancelled, pulled.successful_without_retry), (1, 1));

    // Waiting for the bulkhead's one slot, held by another call: given up on after 1 s.
    let (held, (waiting, in_flight)) = tokio::join!(queued(&c, &url), async {
        let waiting = tokio::time::timeout(Duration::from_secs(1), queued(&c, &url)).await;
        // The call given up on held no slot: the gauge still counts the other one's.
        let in_flight = sample(
            &handle,
            "resilience_bulkhead_in_flight",
            &[r#"bulkhead="m_cancel_bulkhead""#],
        );
        (waiting, in_flight)
    });
    held.unwrap();
    waiting.unwrap_err();
    assert_eq!(in_flight, Some(1.0));
    assert_eq!(cancelled("queued"), Some(1.0));
    let pulled = resilience_runtime::metrics::policy("metrics::queued").unwrap();
    assert_eq!(
        (
            pulled.cancelled,
            pulled.successful_without_retry,
            pulled.rejected_bulkhead
        ),
        (1, 1, 0)
    );
}

/// Two impls of one type at different generic arguments: their methods share one path,
/// `metrics::Gateway::fetch`, and so their metrics.
struct Gateway<T>(std::marker::PhantomData<T>);

impl Gateway<u8> {
    #[resilient(method = GET, timeout = "1s", max_attempts = 1, budget = false)]
    async fn fetch(&self, c: &reqwest::Client, url: &str) -> Result<u16, Error> {
        Ok(c.get(url).send().await?.status().as_u16())
    }
}

impl Gateway<u16> {
    #[resilient(method = GET, timeout = "1s", max_attempts = 1, budget = false)]
    async fn fetch(&self, c: &reqwest::Client, url: &str) -> Result<u16, Error> {
        Ok(c.get(url).send().await?.status().as_u16())
    }
}

/// The README's "their metrics add up": one call of each impl counts two calls of the path.
#[tokio::test]
async fn two_impls_sharing_a_path_add_up() {
    let recorder = recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let c = reqwest::Client::new();
    Gateway::<u8>(std::marker::PhantomData)
        .fetch(&c, &server.url("/"))
        .await
        .unwrap();
    Gateway::<u16>(std::marker::PhantomData)
        .fetch(&c, &server.url("/"))
        .await
        .unwrap();
    assert_eq!(
        sample(
            &handle,
            "resilience_client_calls_total",
            &[
                function_of("Gateway::fetch"),
                r#"outcome="successful_without_retry""#
            ]
        ),
        Some(2.0),
        "{}",
        handle.render()
    );
}

fn function_of(f: &str) -> &'static str {
    Box::leak(format!(r#"function="metrics::{f}""#).into_boxed_str())
}

/// A rate limit shared through Redis that decides locally (here: no Redis was given) says so
/// to the recorder, once per decision: what an alert on "instances holding to the limit
/// alone" reads.
#[tokio::test]
async fn local_decisions_of_a_shared_rate_limit_are_counted() {
    use resilience_runtime::ratelimit::{RateLimitSpec, RateLimitStore, RateLimiter};
    let recorder = recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    telemetry::describe_metrics();
    let limiter = RateLimiter::new(
        "m_shared",
        RateLimitSpec {
            rate: 100,
            per: std::time::Duration::from_secs(1),
            burst: 100,
            max_wait: std::time::Duration::ZERO,
            store: RateLimitStore::Redis,
        },
    );
    let far = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    for _ in 0..3 {
        assert_eq!(limiter.acquire_by(far).await, Ok(()));
    }
    assert_eq!(
        sample(
            &handle,
            "resilience_rate_limit_local_decisions_total",
            &[r#"rate_limit="m_shared""#]
        ),
        Some(3.0)
    );
    assert!(
        handle
            .render()
            .contains("# HELP resilience_rate_limit_local_decisions_total "),
        "described"
    );
}

#[resilient(method = GET, timeout = "2s", max_attempts = 1, budget = false, hedge(delay = "50ms", max = 2))]
async fn hedged_then_dropped(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

/// A hedged call its caller stops waiting for while two hedges are in flight: the call is
/// counted cancelled and both hedges lost (they were not counted at all).
#[tokio::test(start_paused = true)]
async fn hedges_in_flight_when_the_caller_gives_up_are_counted_lost() {
    let recorder = recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::stall())).await;
    let url = server.url("/");
    let r = tokio::time::timeout(Duration::from_millis(120), hedged_then_dropped(&c, &url)).await;
    assert!(r.is_err(), "the caller gave up");
    assert_eq!(server.requests().len(), 3);
    let f = function_of("hedged_then_dropped");
    let hedges = |o: &str| {
        sample(
            &handle,
            "resilience_client_hedges_total",
            &[f, &format!(r#"outcome="{o}""#)],
        )
    };
    assert_eq!(hedges("lost"), Some(2.0));
    assert_eq!(hedges("won").unwrap_or(0.0), 0.0);
    let cancelled = sample(
        &handle,
        "resilience_client_calls_total",
        &[f, r#"outcome="cancelled""#],
    );
    assert_eq!(cancelled, Some(1.0));
}

#[resilient(method = GET, timeout = "2s", max_attempts = 1, budget = false,
    breaker = { failure_rate = 0.5, min_calls = 2, window = 2, open_for = "60s" },
    bulkhead = { max_concurrent = 4 })]
async fn privately_guarded(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

/// A breaker and a bulkhead of the function's own (no `name`) go by its path, in every sample
/// of their gauges: never an empty label shared by every function with private state.
#[tokio::test]
async fn private_breakers_and_bulkheads_are_labelled_with_their_function() {
    let recorder = recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    telemetry::describe_metrics();
    let c = reqwest::Client::new();
    let down = FaultServer::start(Script::always(Action::status(503))).await;
    for _ in 0..3 {
        privately_guarded(&c, &down.url("/")).await.unwrap_err();
    }
    let text = handle.render();
    assert!(!text.contains(r#"breaker="""#), "{text}");
    assert!(!text.contains(r#"bulkhead="""#), "{text}");
    let own = r#"breaker="metrics::privately_guarded""#;
    assert_eq!(
        sample(&handle, "resilience_breaker_state", &[own]),
        Some(2.0)
    );
    let own = r#"bulkhead="metrics::privately_guarded""#;
    assert_eq!(
        sample(&handle, "resilience_bulkhead_in_flight", &[own]),
        Some(0.0)
    );
}

#[resilient(method = GET, timeout = "2s", max_attempts = 1, budget = false)]
async fn panics_midway(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    let body = c.get(url).send().await?.text().await?;
    if body == "ok" {
        panic!("a bug in the body");
    }
    Ok(body)
}

/// A body that panics fails its call: counted failed, not as one its caller stopped waiting
/// for.
#[tokio::test]
async fn a_call_unwound_by_a_panic_is_counted_failed_not_cancelled() {
    let recorder = recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    telemetry::describe_metrics();
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let url = server.url("/");
    let joined =
        tokio::spawn(async move { panics_midway(&reqwest::Client::new(), &url).await }).await;
    assert!(joined.unwrap_err().is_panic());
    let outcome = |o: &str| {
        sample(
            &handle,
            "resilience_client_calls_total",
            &[function_of("panics_midway"), &format!(r#"outcome="{o}""#)],
        )
    };
    assert_eq!(outcome("cancelled"), None);
    assert_eq!(outcome("failed_without_retry"), Some(1.0));
    let pulled = resilience_runtime::metrics::policy("metrics::panics_midway").unwrap();
    assert_eq!((pulled.cancelled, pulled.failed_without_retry), (0, 1));
    // Its attempt failed with the body's own failure: counted so, beside the call.
    assert_eq!(
        sample(
            &handle,
            "resilience_client_attempts_total",
            &[function_of("panics_midway"), r#"class="permanent""#]
        ),
        Some(1.0)
    );
}

/// The server half's counter by route and outcome, through a router: the first request with a
/// key is handled, its repeat replayed, one without a key (where one is required) refused.
#[tokio::test(start_paused = true)]
async fn the_idempotency_layer_counts_its_answers_by_route_and_outcome() {
    let recorder = recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    telemetry::describe_metrics();
    idempotent_requests_counted(&handle).await;
}

/// Serves a router with the idempotency layer, sends a keyed request twice and one without
/// its key, and reads the three answers' counts back from `handle`.
async fn idempotent_requests_counted(handle: &PrometheusHandle) {
    use resilience_runtime::server::{IdempotencyLayer, MemoryStore};

    async fn charge() -> (axum::http::StatusCode, &'static str) {
        (axum::http::StatusCode::CREATED, "charged")
    }
    let app = axum::Router::new()
        .route("/tenants/{tenant}/charges", axum::routing::post(charge))
        .layer(IdempotencyLayer::new(MemoryStore::default()).require_key(true));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let c = reqwest::Client::new();
    let url = format!("{base}/tenants/acme/charges");
    for _ in 0..2 {
        let r = c
            .post(&url)
            .header("idempotency-key", "k-1")
            .body("39000")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let r = c.post(&url).body("39000").send().await.unwrap();
    assert_eq!(r.status(), 400);

    let route = r#"http_route="/tenants/{tenant}/charges""#;
    let requests = |outcome: &str| {
        sample(
            handle,
            "resilience_idempotency_requests_total",
            &[route, &format!(r#"outcome="{outcome}""#)],
        )
    };
    assert_eq!(requests("handled"), Some(1.0), "{}", handle.render());
    assert_eq!(requests("replayed"), Some(1.0));
    assert_eq!(requests("key_missing"), Some(1.0));

    // A keyed request whose body ends before its declared length (the client went away
    // mid-upload): the body cannot be read to fingerprint it.
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut raw = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    raw.write_all(
        b"POST /tenants/acme/charges HTTP/1.1\r\nhost: x\r\nidempotency-key: k-2\r\ncontent-length: 100\r\n\r\n39000",
    )
    .await
    .unwrap();
    raw.shutdown().await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut answer)).await;
    let mut counted = None;
    for _ in 0..100 {
        counted = requests("body_unreadable");
        if counted.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(counted, Some(1.0), "{}", handle.render());
    assert_eq!(requests("handled"), Some(1.0), "the handler did not run");
}

/// A store that refuses to take responses while told to (a Redis that went away mid-request).
struct FlakyStore {
    inner: resilience_runtime::server::MemoryStore,
    failing: std::sync::atomic::AtomicBool,
}

impl resilience_runtime::server::IdempotencyStore for FlakyStore {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        claim: &'a resilience_runtime::server::InFlight,
        lease: Duration,
    ) -> resilience_runtime::server::BoxFuture<
        'a,
        Result<resilience_runtime::server::Claim, resilience_runtime::server::StoreError>,
    > {
        self.inner.claim(key, claim, lease)
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        claim: &'a resilience_runtime::server::InFlight,
        lease: Duration,
    ) -> resilience_runtime::server::BoxFuture<
        'a,
        Result<bool, resilience_runtime::server::StoreError>,
    > {
        self.inner.renew(key, claim, lease)
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        claim: &'a resilience_runtime::server::InFlight,
        response: &'a resilience_runtime::server::StoredResponse,
        ttl: Duration,
    ) -> resilience_runtime::server::BoxFuture<
        'a,
        Result<bool, resilience_runtime::server::StoreError>,
    > {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Box::pin(async {
                Err(resilience_runtime::server::StoreError::new(
                    "store went away",
                ))
            });
        }
        self.inner.complete(key, claim, response, ttl)
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        claim: &'a resilience_runtime::server::InFlight,
    ) -> resilience_runtime::server::BoxFuture<
        'a,
        Result<bool, resilience_runtime::server::StoreError>,
    > {
        self.inner.release(key, claim)
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> resilience_runtime::server::BoxFuture<
        'a,
        Result<Option<resilience_runtime::server::Record>, resilience_runtime::server::StoreError>,
    > {
        self.inner.get(key)
    }
}

/// `resilience_idempotency_pending`: a response the store could not take is kept in memory
/// (1) until the store takes it (0), and a repeat meanwhile is answered from memory.
#[tokio::test(start_paused = true)]
async fn a_response_the_store_could_not_take_is_pending_until_it_does() {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use resilience_runtime::server::IdempotencyLayer;

    let recorder = recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let store = Arc::new(FlakyStore {
        inner: resilience_runtime::server::MemoryStore::default(),
        failing: std::sync::atomic::AtomicBool::new(true),
    });
    async fn charge() -> (axum::http::StatusCode, &'static str) {
        (axum::http::StatusCode::CREATED, "charged")
    }
    let app = axum::Router::new()
        .route("/charges", axum::routing::post(charge))
        .layer(IdempotencyLayer::new(store.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/charges", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let c = reqwest::Client::new();
    let pay = || {
        c.post(&url)
            .header("idempotency-key", "k-9")
            .body("39000")
            .send()
    };
    assert_eq!(pay().await.unwrap().status(), 201);
    // A gauge without labels: `name value`.
    let pending = || {
        handle
            .render()
            .lines()
            .find_map(|l| l.strip_prefix("resilience_idempotency_pending "))
            .and_then(|v| v.parse::<f64>().ok())
    };
    assert_eq!(pending(), Some(1.0), "{}", handle.render());
    // The repeat, from memory.
    let again = pay().await.unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.text().await.unwrap(), "charged");
    // The store is back: the response is written, and no longer pending.
    store.failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pending(), Some(0.0), "{}", handle.render());
}

#[resilient(
    method = GET,
    timeout = "5s",
    max_attempts = 1,
    breaker = { name = "m_half_open", failure_rate = 0.5, min_calls = 2, window = 2, open_for = "1s", half_open_calls = 1 },
    budget = false,
)]
async fn half_opening(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    get(c, url).await
}

/// A call its open breaker refuses before it starts takes no clock read: it has no duration.
/// Nor does one refused by a half-open breaker whose probe is taken: it is refused before it
/// starts too (it was admitted first, taking a bulkhead slot, a rate-limit permit and a
/// deposit in the budget for a call that sent nothing). Both count under `rejected_breaker`.
#[tokio::test(start_paused = true)]
async fn a_breakers_refusal_before_the_call_starts_has_no_duration_open_or_half_open() {
    let recorder = recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    telemetry::describe_metrics(); // the duration's unit: `_seconds`
    let c = reqwest::Client::new();
    let down = FaultServer::start(Script::always(Action::status(503))).await;
    let stalled = FaultServer::start(Script::always(Action::stall())).await;
    let durations = || {
        sample(
            &handle,
            "resilience_client_call_duration_seconds_count",
            &[function_of("half_opening"), r#"outcome="rejected_breaker""#],
        )
    };
    for _ in 0..2 {
        half_opening(&c, &down.url("/")).await.unwrap_err();
    }
    let open = half_opening(&c, &down.url("/")).await.unwrap_err();
    assert_eq!(open.kind(), resilience_runtime::ErrorKind::CircuitOpen);
    assert_eq!(durations(), None, "refused before it started: no duration");

    // Half-open: the probe is taken by a call that waits on a stalled server.
    tokio::time::advance(std::time::Duration::from_secs(2)).await;
    let probe = tokio::spawn({
        let (c, url) = (c.clone(), stalled.url("/"));
        async move { half_opening(&c, &url).await }
    });
    assert_eq!(stalled.wait_for(1).await, 1, "the probe reached the server");
    let refused = half_opening(&c, &down.url("/")).await.unwrap_err();
    assert_eq!(refused.kind(), resilience_runtime::ErrorKind::CircuitOpen);
    assert_eq!(refused.attempts(), 0, "{refused}");
    assert_eq!(durations(), None, "refused before it started: no duration");
    assert_eq!(
        sample(
            &handle,
            "resilience_client_calls_total",
            &[function_of("half_opening"), r#"outcome="rejected_breaker""#]
        ),
        Some(2.0)
    );
    probe.abort();
}

#[resilient(method = POST, timeout = "1s", max_attempts = 1, budget = false, idempotency_key = key)]
async fn keyed_charge(c: &reqwest::Client, url: &str, key: &str) -> Result<String, Error> {
    Ok(c.post(url).send().await?.text().await?)
}

/// A call refused for an invalid key is counted `failed_without_retry`, with no duration
/// (it took no clock read), and one that ran has one.
#[tokio::test]
async fn a_call_refused_for_an_invalid_key_is_counted_without_a_duration() {
    let recorder = recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    telemetry::describe_metrics();
    let c = reqwest::Client::new();
    let ok = FaultServer::start(Script::always(Action::ok())).await;
    let e = keyed_charge(&c, &ok.url("/"), "").await.unwrap_err();
    assert_eq!(e.attempts(), 0, "{e}");
    let failed = r#"outcome="failed_without_retry""#;
    let of = function_of("keyed_charge");
    assert_eq!(
        sample(&handle, "resilience_client_calls_total", &[of, failed]),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &handle,
            "resilience_client_call_duration_seconds_count",
            &[of, failed]
        ),
        None,
        "{}",
        handle.render()
    );
    // A call that ran has its duration.
    keyed_charge(&c, &ok.url("/"), "k-1").await.unwrap();
    assert_eq!(
        sample(
            &handle,
            "resilience_client_call_duration_seconds_count",
            &[of, r#"outcome="successful_without_retry""#]
        ),
        Some(1.0)
    );
    assert_eq!(ok.count(), 1);
}

#[resilient(method = GET, timeout = "2s", budget = { name = "m_gauge", ratio = 1.0, min_per_sec = 0 })]
async fn deposits_one_retry() -> Result<u64, Error> {
    Ok(1)
}

/// The budget's gauge, set at each call's end: each first attempt deposits a whole retry here
/// (`ratio = 1.0`); the gauge holds every one of them but the few this thread still batches
/// (seven at most), and all of them once the batch is recorded.
#[tokio::test]
async fn the_budget_gauge_follows_first_attempts_within_a_batch() {
    let recorder = recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    for n in 1..=20u32 {
        assert_eq!(deposits_one_retry().await.unwrap(), 1);
        let shown = sample(
            &handle,
            "resilience_budget_available",
            &[r#"budget="m_gauge""#],
        )
        .expect("the gauge is set at the call's end");
        assert!(
            f64::from(n.saturating_sub(7)) <= shown && shown <= f64::from(n),
            "after {n} first attempts the gauge shows {shown}"
        );
    }
}

/// The environment variable that makes [`global_recorder_child`] run: the child process of
/// [`a_global_recorder_is_recorded_to_through_kept_handles`].
const GLOBAL_CHILD: &str = "RESILIENCE_METRICS_GLOBAL_CHILD";

#[resilient(method = GET, timeout = "1s")]
async fn kept(n: u64) -> Result<u64, Error> {
    Ok(n + 1)
}

/// The process's global recorder, which the runtime records to through handles it keeps per
/// thread (asking the recorder for them once, not on every call), in a child process of this
/// test binary: a recorder can be made global once, and every other test here records to a
/// local one.
#[test]
fn a_global_recorder_is_recorded_to_through_kept_handles() {
    support::run_in_child("global_recorder_child", GLOBAL_CHILD);
}

#[test]
#[ignore = "the child process of a_global_recorder_is_recorded_to_through_kept_handles"]
fn global_recorder_child() {
    if std::env::var_os(GLOBAL_CHILD).is_none() {
        return;
    }
    // A metric the exporter sees unchanged for a second is dropped at its next rendering, and
    // comes back only when registered again: a kept handle idle that long is asked for again.
    // (The exporter's clock is the process's own: this test waits in real time.)
    let handle = PrometheusBuilder::new()
        .with_recommended_naming(true)
        .idle_timeout(
            metrics_util::MetricKindMask::ALL,
            Some(Duration::from_secs(1)),
        )
        .install_recorder()
        .unwrap();
    telemetry::describe_metrics();
    let calls = |h: &PrometheusHandle| {
        sample(
            h,
            "resilience_client_calls_total",
            &[function_of("kept"), r#"outcome="successful_without_retry""#],
        )
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for i in 0..50 {
            assert_eq!(kept(i).await.unwrap(), i + 1);
        }
    });
    assert_eq!(calls(&handle), Some(50.0));

    // Idle past the exporter's timeout: dropped at this rendering, then counted again.
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(calls(&handle), None, "dropped as idle");
    rt.block_on(kept(1)).unwrap();
    assert_eq!(
        calls(&handle),
        Some(1.0),
        "a call after the metric was dropped registers it again"
    );

    // A local recorder set on this thread gets its calls; the global one none of them.
    let local = recorder();
    let local_handle = local.handle();
    {
        let _guard = metrics::set_default_local_recorder(&local);
        for i in 0..3 {
            rt.block_on(kept(i)).unwrap();
        }
    }
    assert_eq!(calls(&local_handle), Some(3.0));
    assert_eq!(calls(&handle), Some(1.0));

    // Another thread keeps handles of its own, to the same metrics.
    std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        for i in 0..5 {
            rt.block_on(kept(i)).unwrap();
        }
    })
    .join()
    .unwrap();
    rt.block_on(kept(1)).unwrap();
    assert_eq!(calls(&handle), Some(7.0));

    // The server half's counts go through handles kept the same way.
    rt.block_on(idempotent_requests_counted(&handle));
}

const UNDESCRIBED_CHILD: &str = "RESILIENCE_METRICS_UNDESCRIBED_CHILD";

/// A global Prometheus recorder installed without `describe_metrics()` (as the README's
/// second recorder snippet is, copied alone): the runtime describes the metrics to it when
/// it first finds it, so the durations are still exported as `…_seconds`, the names the
/// dashboards query. In a child process (a recorder can be made global once).
#[test]
fn a_global_recorder_not_described_by_hand_still_gets_the_units() {
    support::run_in_child("undescribed_recorder_child", UNDESCRIBED_CHILD);
}

#[test]
#[ignore = "the child process of a_global_recorder_not_described_by_hand_still_gets_the_units"]
fn undescribed_recorder_child() {
    if std::env::var_os(UNDESCRIBED_CHILD).is_none() {
        return;
    }
    let handle = PrometheusBuilder::new()
        .with_recommended_naming(true)
        .install_recorder()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The runtime looks for the recorder on a thread of its own: bounded wait for it.
    let mut text = String::new();
    for i in 0..200 {
        assert_eq!(rt.block_on(kept(i)).unwrap(), i + 1);
        text = handle.render();
        if text.contains("resilience_client_call_duration_seconds_sum{") {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        text.contains("resilience_client_call_duration_seconds_sum{"),
        "the call duration exported in seconds:\n{text}"
    );
    assert!(
        !text.contains("resilience_client_call_duration_sum{"),
        "and not without its unit:\n{text}"
    );
    assert!(
        text.contains("# HELP resilience_client_calls_total"),
        "help texts given:\n{text}"
    );
}

/// Two local recorders one after the other on the same thread (the second may well sit where
/// the first did): each gets the calls made while it is set, none of the other's.
#[test]
fn local_recorders_one_after_another_each_get_their_own_calls() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let calls = |h: &PrometheusHandle| {
        sample(
            h,
            "resilience_client_calls_total",
            &[function_of("kept"), r#"outcome="successful_without_retry""#],
        )
    };
    for n in [2, 5] {
        let local = recorder();
        let handle = local.handle();
        {
            let _guard = metrics::set_default_local_recorder(&local);
            for i in 0..n {
                rt.block_on(kept(i)).unwrap();
            }
        }
        assert_eq!(calls(&handle), Some(n as f64));
    }
}

#[resilient(
    method = GET,
    timeout = "2s",
    max_attempts = 2,
    backoff(kind = constant, initial = "100ms", max = "100ms", jitter = none),
    breaker = { name = "m_unmade_retry", failure_rate = 0.5, min_calls = 1, window = 1, open_for = "1h", half_open_calls = 1 },
    budget = false,
)]
async fn retry_refused(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    get(c, url).await
}

/// A retry is counted when it is made, not when it is decided on: a call whose first failure
/// opened its breaker decides to retry, then the breaker refuses the retry. One request went
/// out, no failure was retried: `resilience_client_retries_total` has no sample, the call is
/// `rejected_breaker`, and the pull API counts it failed without retry, with no retry.
#[tokio::test(start_paused = true)]
async fn a_retry_its_breaker_refused_is_not_counted_as_made() {
    let recorder = recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let c = reqwest::Client::new();
    let down = FaultServer::start(Script::always(Action::status(503))).await;
    let e = retry_refused(&c, &down.url("/")).await.unwrap_err();
    assert_eq!(e.kind(), resilience_runtime::ErrorKind::CircuitOpen, "{e}");
    assert_eq!(e.attempts(), 1, "{e}");
    assert_eq!(down.count(), 1, "the retry was never sent");
    let text = handle.render();
    let retries: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("resilience_client_retries_total{")
                && l.contains(function_of("retry_refused"))
        })
        .collect();
    assert!(retries.is_empty(), "no retry was made: {retries:?}");
    assert_eq!(
        sample(
            &handle,
            "resilience_client_calls_total",
            &[
                function_of("retry_refused"),
                r#"outcome="rejected_breaker""#
            ]
        ),
        Some(1.0)
    );
    let m = resilience_runtime::metrics::policy("metrics::retry_refused").unwrap();
    assert_eq!(m.retries, 0, "{m:?}");
    assert_eq!(
        (m.failed_without_retry, m.failed_with_retry),
        (1, 0),
        "{m:?}"
    );
    assert_eq!(m.rejected_breaker, 1, "{m:?}");
}

#[resilient(
    method = GET,
    timeout = "2s",
    max_attempts = 3,
    backoff(kind = constant, initial = "100ms", max = "100ms", jitter = none),
    breaker = { name = "m_retried_then_refused", failure_rate = 1.0, min_calls = 2, window = 2, open_for = "1h", half_open_calls = 1 },
    budget = false,
)]
async fn retried_then_refused(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    get(c, url).await
}

/// A call that retried, then had its next retry refused by the breaker its failures opened:
/// `rejected_breaker` in the metric (the README's rule), where the pull API counts it under
/// both, failed with retry and refused by the breaker; one retry made.
#[tokio::test(start_paused = true)]
async fn a_call_that_retried_then_was_refused_by_its_breaker_is_rejected_breaker() {
    let recorder = recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let c = reqwest::Client::new();
    let down = FaultServer::start(Script::always(Action::status(503))).await;
    let e = retried_then_refused(&c, &down.url("/")).await.unwrap_err();
    assert_eq!(e.kind(), resilience_runtime::ErrorKind::CircuitOpen, "{e}");
    assert_eq!((e.attempts(), down.count()), (2, 2), "{e}");
    let f = function_of("retried_then_refused");
    assert_eq!(
        sample(
            &handle,
            "resilience_client_calls_total",
            &[f, r#"outcome="rejected_breaker""#]
        ),
        Some(1.0)
    );
    for other in ["failed_with_retry", "failed_without_retry"] {
        let label = format!(r#"outcome="{other}""#);
        assert_eq!(
            sample(&handle, "resilience_client_calls_total", &[f, &label]),
            None,
            "{other}"
        );
    }
    assert_eq!(
        sample(&handle, "resilience_client_retries_total", &[f]),
        Some(1.0)
    );
    let m = resilience_runtime::metrics::policy("metrics::retried_then_refused").unwrap();
    assert_eq!(m.retries, 1, "{m:?}");
    assert_eq!(
        (
            m.failed_without_retry,
            m.failed_with_retry,
            m.rejected_breaker
        ),
        (0, 1, 1),
        "{m:?}"
    );
}

#[resilient(
    method = GET,
    timeout = "1s",
    deadline = "5s",
    max_attempts = 1,
    budget = false,
    bulkhead = { name = "m_waiting", max_concurrent = 4 },
    rate_limit = { rate = 1, per = "1s", burst = 1, max_wait = "2s" },
)]
async fn slot_then_permit(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    get(c, url).await
}

/// A call that holds its bulkhead slot while it waits for a rate-limit permit is in flight for
/// the bulkhead's gauge during the wait, as the bulkhead itself counts it.
#[tokio::test(start_paused = true)]
async fn a_slot_held_while_waiting_for_a_permit_is_in_the_gauge() {
    let recorder = recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let url = server.url("/");
    slot_then_permit(&c, &url).await.unwrap();
    let (second, during) = tokio::join!(slot_then_permit(&c, &url), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        (
            sample(
                &handle,
                "resilience_bulkhead_in_flight",
                &[r#"bulkhead="m_waiting""#],
            ),
            resilience_runtime::metrics::bulkhead("m_waiting")
                .unwrap()
                .in_flight,
        )
    });
    second.unwrap();
    assert_eq!(during.1, 1, "the bulkhead holds the waiting call's slot");
    assert_eq!(during.0, Some(1.0), "and its gauge says so");
}

async fn cached_price(_c: &reqwest::Client, _url: &str) -> Result<String, Error> {
    Ok("cached".to_owned())
}

#[resilient(method = GET, timeout = "1s", max_attempts = 2, backoff(initial = "1ms", max = "1ms"), budget = false, fallback = cached_price)]
async fn price_or_cached(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

/// A call its fallback answered is counted by how the call itself ended (failed, after a
/// retry), in the facade and the pull API alike: the fallback's answer is no success of the
/// dependency's.
#[tokio::test]
async fn a_call_its_fallback_answered_is_counted_failed() {
    let recorder = recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    telemetry::describe_metrics();
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    assert_eq!(
        price_or_cached(&reqwest::Client::new(), &server.url("/"))
            .await
            .unwrap(),
        "cached"
    );
    assert_eq!(
        sample(
            &handle,
            "resilience_client_calls_total",
            &[
                function_of("price_or_cached"),
                r#"outcome="failed_with_retry""#
            ]
        ),
        Some(1.0)
    );
    let pulled = resilience_runtime::metrics::policy("metrics::price_or_cached").unwrap();
    assert_eq!(
        (
            pulled.failed_with_retry,
            pulled.successful_without_retry,
            pulled.successful_with_retry
        ),
        (1, 0, 0)
    );
}

#[resilient(method = GET, timeout = "25s", deadline = "60s", max_attempts = 1)]
async fn slow_gateway(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    get(c, url).await
}

/// The README's longer buckets for a gateway slower than 10 s: with them an attempt of 20 s
/// lands in the bucket that holds it (both durations), where the advised ones end at 10 s and
/// put it in `+Inf` only.
#[tokio::test(start_paused = true)]
async fn the_readmes_longer_buckets_hold_an_attempt_past_ten_seconds() {
    use metrics_exporter_prometheus::Matcher;
    let longer = [
        0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 15.0,
        30.0, 60.0,
    ];
    let recorder = PrometheusBuilder::new()
        .with_recommended_naming(true)
        .set_buckets_for_metric(Matcher::Suffix("duration".into()), &longer)
        .unwrap()
        .build_recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    telemetry::describe_metrics();
    let server =
        FaultServer::start(Script::always(Action::ok().after(Duration::from_secs(20)))).await;
    let c = reqwest::Client::new();
    slow_gateway(&c, &server.url("/pay")).await.unwrap();
    let f = function_of("slow_gateway");
    for name in [
        "http_client_request_duration_seconds_bucket",
        "resilience_client_call_duration_seconds_bucket",
    ] {
        assert_eq!(
            sample(&handle, name, &[f, r#"le="10""#]),
            Some(0.0),
            "{name}"
        );
        assert_eq!(
            sample(&handle, name, &[f, r#"le="30""#]),
            Some(1.0),
            "{name}"
        );
    }
}

/// Returns a 503's status as a number: an `Ok`.
#[resilient(
    method = GET,
    timeout = "1s",
    budget = false,
    breaker = { name = "m_ok_after_503", failure_rate = 0.5, min_calls = 2, window = 4, open_for = "60s", half_open_calls = 1 },
)]
async fn status_as_a_number(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// A body that returns `Ok` after a 503 succeeded, for the retry, the breaker and the metrics
/// alike (README, "When a retry happens"): one request each, the breaker's window all
/// successes, and the calls counted as successful without a retry.
#[tokio::test]
async fn an_ok_after_a_503_is_a_success_for_the_breaker_and_the_metrics() {
    let recorder = recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    telemetry::describe_metrics();
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    let c = reqwest::Client::new();
    for _ in 0..4 {
        assert_eq!(status_as_a_number(&c, &server.url("/")).await.unwrap(), 503);
    }
    assert_eq!(server.count(), 4, "none retried");
    let breaker = resilience_runtime::breakers::state("m_ok_after_503").unwrap();
    assert_eq!(
        breaker.state,
        resilience_runtime::breakers::BreakerState::Closed
    );
    assert_eq!((breaker.window_calls, breaker.window_failures), (4, 0));
    let f = function_of("status_as_a_number");
    assert_eq!(
        sample(
            &handle,
            "resilience_client_calls_total",
            &[f, r#"outcome="successful_without_retry""#]
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(
            &handle,
            "resilience_client_attempts_total",
            &[f, r#"class="ok""#]
        ),
        Some(4.0)
    );
}

#[resilient(method = GET, timeout = "1s", max_attempts = 1, budget = false, hedge(delay = "100ms"))]
async fn hedged_answered_then_hung(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

/// A round that ends on an attempt's answer (a 404 at 150 ms) after its hedge hung to its
/// timeout counts that answer's attempt, with its own duration: not the hung hedge's second
/// under the answer's class (a p99 of 4xx attempts as long as the timeout).
#[tokio::test(start_paused = true)]
async fn a_round_ended_on_an_earlier_answer_counts_that_attempts_duration() {
    let recorder = recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    telemetry::describe_metrics();
    let server = FaultServer::start(Script::sequence([
        Action::status(404).after(Duration::from_millis(150)),
        Action::stall(),
    ]))
    .await;
    let e = hedged_answered_then_hung(&reqwest::Client::new(), &server.url("/items/7"))
        .await
        .unwrap_err();
    assert_eq!((e.http_status(), server.count()), (Some(404), 2), "{e}");
    let f = function_of("hedged_answered_then_hung");
    let status = |suffix: &str| {
        sample(
            &handle,
            &format!("http_client_request_duration_seconds_{suffix}"),
            &[f, r#"class="status""#],
        )
    };
    assert_eq!(status("count"), Some(1.0), "{}", handle.render());
    let sum = status("sum").unwrap();
    assert!(
        (0.14..0.2).contains(&sum),
        "the 404's own 150 ms, not the hedge's timeout: {sum}"
    );
    let timeouts = sample(
        &handle,
        "http_client_request_duration_seconds_count",
        &[f, r#"class="timeout""#],
    );
    assert_eq!(
        timeouts, None,
        "the hung hedge is not an attempt the call acted on"
    );
}

#[resilient(method = GET, timeout = "250ms", deadline = "300ms", max_attempts = 1, bulkhead = { name = "m_queue", max_concurrent = 1, max_wait = "10s" }, budget = false)]
async fn queued_past_deadline(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    get(c, url).await
}

/// Holds the slot of `queued_past_deadline`'s bulkhead for as long as its server takes.
#[resilient(method = GET, timeout = "2s", max_attempts = 1, bulkhead = { name = "m_queue", max_concurrent = 1, max_wait = "10s" }, budget = false)]
async fn queue_holder(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    get(c, url).await
}

/// A call whose deadline came while it waited for the bulkhead's slot is counted
/// `rejected_bulkhead`, as the README's outcome list says, its error a `DeadlineExceeded`
/// (not `BulkheadFull`: the wait was allowed, the caller's time ran out).
#[tokio::test(start_paused = true)]
async fn a_deadline_reached_in_the_bulkheads_queue_is_counted_rejected_bulkhead() {
    let recorder = recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    telemetry::describe_metrics();
    let server =
        FaultServer::start(Script::always(Action::ok().after(Duration::from_secs(1)))).await;
    let c = reqwest::Client::new();
    let url = server.url("/");
    let (first, second) = tokio::join!(queue_holder(&c, &url), async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        queued_past_deadline(&c, &url).await
    });
    assert_eq!(first.unwrap(), "ok");
    let second = second.unwrap_err();
    assert_eq!(
        second.kind(),
        resilience_runtime::ErrorKind::DeadlineExceeded,
        "{second}"
    );
    assert!(second.is_rejected(), "{second}");
    assert_eq!(server.count(), 1, "the queued call sent nothing");
    let rejected = sample(
        &handle,
        "resilience_client_calls_total",
        &[
            function_of("queued_past_deadline"),
            r#"outcome="rejected_bulkhead""#,
        ],
    );
    assert_eq!(rejected, Some(1.0), "{}", handle.render());
}

/// Its request stalls, or its body panics on an answer: a slot held when its call ends.
#[resilient(method = GET, timeout = "2s", max_attempts = 1, budget = false, bulkhead = { name = "m_slot_gone", max_concurrent = 2 })]
async fn slot_gone(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    let body = get(c, url).await?;
    if body == "ok" {
        panic!("a bug in the body");
    }
    Ok(body)
}

#[resilient(method = GET, timeout = "2s", max_attempts = 1, budget = false, concurrency_limit = { name = "m_limit_gone", initial = 2, min = 1, max = 4, latency = "1s" })]
async fn limit_slot_gone(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    let body = get(c, url).await?;
    if body == "ok" {
        panic!("a bug in the body");
    }
    Ok(body)
}

/// The in-flight gauges of a bulkhead and of a concurrency limit come back to 0 when a call
/// holding a slot is dropped by its caller mid-request, and when its body panics.
#[tokio::test(start_paused = true)]
async fn in_flight_gauges_come_back_down_after_a_cancelled_or_panicking_call() {
    let recorder = recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let c = reqwest::Client::new();
    let stalled = FaultServer::start(Script::always(Action::stall())).await;
    let ok = FaultServer::start(Script::always(Action::ok())).await;
    let gauges = || {
        (
            sample(
                &handle,
                "resilience_bulkhead_in_flight",
                &[r#"bulkhead="m_slot_gone""#],
            ),
            sample(
                &handle,
                "resilience_concurrency_limit_in_flight",
                &[r#"concurrency_limit="m_limit_gone""#],
            ),
        )
    };
    // Dropped by the caller mid-request: in flight while it waits, none after.
    let hung = stalled.url("/");
    let (during, dropped) = tokio::join!(
        async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            gauges()
        },
        tokio::time::timeout(Duration::from_millis(100), async {
            tokio::join!(slot_gone(&c, &hung), limit_slot_gone(&c, &hung))
        })
    );
    assert!(dropped.is_err());
    assert_eq!(during, (Some(1.0), Some(1.0)));
    assert_eq!(gauges(), (Some(0.0), Some(0.0)));
    // Unwound by a panic of its body, on a task of its own.
    let (url, c2) = (ok.url("/"), c.clone());
    let a = tokio::spawn(async move { slot_gone(&c2, &url).await }).await;
    let (url, c2) = (ok.url("/"), c.clone());
    let b = tokio::spawn(async move { limit_slot_gone(&c2, &url).await }).await;
    assert!(a.unwrap_err().is_panic() && b.unwrap_err().is_panic());
    assert_eq!(gauges(), (Some(0.0), Some(0.0)));
    assert_eq!(
        resilience_runtime::metrics::bulkhead("m_slot_gone")
            .unwrap()
            .in_flight,
        0
    );
    assert_eq!(
        resilience_runtime::metrics::concurrency_limit("m_limit_gone")
            .unwrap()
            .in_flight,
        0
    );
}

#[resilient(
    method = GET,
    timeout = "5s",
    max_attempts = 1,
    breaker = { name = "m_recovering", failure_rate = 0.5, min_calls = 2, window = 2, open_for = "1s", half_open_calls = 1 },
    budget = false,
)]
async fn recovering(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    get(c, url).await
}

/// The breaker's gauge and transitions through a whole incident: open (2), still read open
/// once `open_for` has passed until a call asks, half-open (1) while the probe runs, closed (0)
/// after it succeeds; each transition counted once.
#[tokio::test(start_paused = true)]
async fn the_breaker_gauge_follows_an_incident_to_its_end() {
    let recorder = recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let c = reqwest::Client::new();
    let down = FaultServer::start(Script::always(Action::status(503))).await;
    let slow_then_up = FaultServer::start(Script::always(
        Action::ok().after(Duration::from_millis(100)),
    ))
    .await;
    let b = r#"breaker="m_recovering""#;
    let state = || sample(&handle, "resilience_breaker_state", &[b]);
    let moved = |from: &str, to: &str| {
        sample(
            &handle,
            "resilience_breaker_transitions_total",
            &[b, &format!(r#"from="{from}""#), &format!(r#"to="{to}""#)],
        )
    };
    recovering(&c, &down.url("/")).await.unwrap_err();
    assert_eq!(state(), Some(0.0), "closed");
    recovering(&c, &down.url("/")).await.unwrap_err();
    assert_eq!(state(), Some(2.0), "open");
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(state(), Some(2.0), "open until a call asks");
    let up = slow_then_up.url("/");
    let (probe, during) = tokio::join!(recovering(&c, &up), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        state()
    });
    probe.unwrap();
    assert_eq!(during, Some(1.0), "half-open while the probe runs");
    assert_eq!(state(), Some(0.0), "closed after it");
    assert_eq!(moved("closed", "open"), Some(1.0));
    assert_eq!(moved("open", "half-open"), Some(1.0));
    assert_eq!(moved("half-open", "closed"), Some(1.0));
}
