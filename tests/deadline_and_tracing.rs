//! The deadline is never overshot, and every call leaves a span and one event per attempt.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use resilience_fault_server::{Action, FaultServer, Script};
use resilience_runtime::{Error, ErrorKind, RequestBuilderExt as _, resilient};
use tokio::time::Instant;

#[resilient(timeout = "1s", deadline = "2500ms", max_attempts = 5, backoff(initial = "100ms", max = "100ms", jitter = none), budget = false)]
async fn slow(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url)
        .resilient()
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[tokio::test(start_paused = true)]
async fn a_stalled_server_cannot_push_the_call_past_its_deadline() {
    let server = FaultServer::start(Script::always(Action::stall())).await;
    let started = Instant::now();
    let e = slow(&reqwest::Client::new(), &server.url("/"))
        .await
        .unwrap_err();
    let took = started.elapsed();
    // 1 s attempt, 100 ms backoff, 1 s attempt, 100 ms backoff, then the 300 ms left.
    assert_eq!(e.kind(), ErrorKind::DeadlineExceeded, "{e}");
    assert_eq!(e.attempts(), 3);
    assert_eq!(server.count(), 3);
    assert!(took <= Duration::from_millis(2500), "overshot: {took:?}");
    assert!(
        took >= Duration::from_millis(2490),
        "gave up early: {took:?}"
    );
    assert_eq!(e.elapsed(), Some(took));
}

#[resilient(timeout = "1s", deadline = "2s", max_attempts = 3, backoff(initial = "1500ms", max = "1500ms", jitter = none), budget = false)]
async fn long_backoff(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url)
        .resilient()
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[tokio::test(start_paused = true)]
async fn a_backoff_that_would_cross_the_deadline_is_not_slept() {
    let server = FaultServer::start(Script::always(
        Action::status(503).after(Duration::from_millis(600)),
    ))
    .await;
    let started = Instant::now();
    let e = long_backoff(&reqwest::Client::new(), &server.url("/"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Call);
    assert_eq!(e.http_status(), Some(503));
    assert_eq!(server.count(), 1);
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "slept in vain: {:?}",
        started.elapsed()
    );
}

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[resilient(timeout = "1s", backoff(initial = "10ms", max = "10ms", jitter = none), budget = false)]
async fn traced(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url)
        .resilient()
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[tokio::test(start_paused = true)]
async fn one_span_per_call_and_one_event_per_attempt() {
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = FaultServer::start(vec![Action::reset(), Action::status(503)]).await;
    assert_eq!(
        traced(&reqwest::Client::new(), &server.url("/"))
            .await
            .unwrap(),
        "ok"
    );
    let request_id = server.requests()[0]
        .header("x-request-id")
        .unwrap()
        .to_owned();

    let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("resilient{") && l.contains("resilience_runtime"))
        .collect();
    assert_eq!(lines.len(), 3, "one event per attempt:\n{out}");
    for l in &lines {
        assert!(
            l.contains("function=\"deadline_and_tracing::traced\""),
            "{l}"
        );
        assert!(l.contains("method=\"GET\""), "{l}");
        assert!(l.contains(&format!("request_id={request_id}")), "{l}");
    }
    assert!(
        lines[0].contains("attempt=1")
            && lines[0].contains("class=\"reset\"")
            && lines[0].contains("decision=\"retry\"")
            && lines[0].contains("delay_ms=10"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("attempt=2")
            && lines[1].contains("class=\"status\"")
            && lines[1].contains("status=503"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].contains("attempt=3") && lines[2].contains("attempt succeeded"),
        "{}",
        lines[2]
    );

    buf.0.lock().unwrap().clear();
    let down = FaultServer::start(Script::always(Action::status(404))).await;
    assert!(
        traced(&reqwest::Client::new(), &down.url("/"))
            .await
            .is_err()
    );
    let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(
        out.contains("decision=\"give up\"") && out.contains("reason=\"permanent failure\""),
        "{out}"
    );
}
