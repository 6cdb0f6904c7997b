//! Against a real httpbin (the PyPI package, served by its own Werkzeug server on a loopback
//! port): what a server of another project receives from each attempt of a keyed call, read
//! back from its `/anything` echo. Both attempts carry the one `Idempotency-Key` and the one
//! `X-Request-Id`, a W3C `traceparent` of the one trace with a parent of each attempt's own,
//! their `X-Attempt` number, and an `X-Timeout-Ms` within the call's deadline.
//!
//! Needs httpbin (`pip install httpbin`; `.ci/test` installs it); without it the test is
//! skipped, unless `CI` is set: then it fails.

mod process;

use std::process::{Command, Stdio};
use std::sync::Mutex;

use resilience_runtime::{Error, resilient};

/// httpbin on a free loopback port; `None` (skip) if it is not installed.
async fn httpbin() -> Option<process::Process> {
    let installed = Command::new("python3")
        .args(["-c", "import httpbin"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        if std::env::var_os("CI").is_some() {
            panic!("CI is set but httpbin is not installed; .ci/test installs it");
        }
        // Straight to stderr: the test harness captures `eprintln!`, and a skip must be seen.
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"skipping: httpbin not installed (pip install httpbin); .ci/test installs it\n",
        );
        return None;
    }
    process::Process::start("python3", |_, port| {
        ["-m", "httpbin.core", "--host", "127.0.0.1", "--port"]
            .iter()
            .map(Into::into)
            .chain([port.to_string().into()])
            .collect()
    })
    .await
}

/// One attempt: a keyed POST to `/anything`, whose echo of the request is kept in `echoes`,
/// then `/status/503` on the first attempt (a transient failure: the call is retried) and
/// `/status/200` after.
#[resilient(
    timeout = "2s",
    deadline = "10s",
    max_attempts = 3,
    backoff(initial = "5ms", max = "20ms"),
    idempotency_key = auto
)]
async fn echoed(
    http: &reqwest::Client,
    base: &str,
    echoes: &Mutex<Vec<serde_json::Value>>,
) -> Result<u16, Error> {
    let echo: serde_json::Value = http
        // `show_env`: httpbin hides `X-Request-Id` (a header its own hosting adds) otherwise.
        .post(format!("{base}/anything?show_env=1"))
        .body("order=1042")
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    echoes.lock().unwrap().push(echo);
    let attempt = resilience_runtime::current_attempt().map_or(0, |a| a.attempt);
    let status = if attempt == 1 { 503 } else { 200 };
    let answer = http
        .get(format!("{base}/status/{status}"))
        .send()
        .await?
        .error_for_status()?;
    Ok(answer.status().as_u16())
}

/// A header of an echoed request, as httpbin received it.
fn header<'a>(echo: &'a serde_json::Value, name: &str) -> &'a str {
    echo["headers"]
        .as_object()
        .and_then(|h| h.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)))
        .and_then(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} in {echo}"))
}

/// `version-traceid-parentid-flags`, lower-case hex of 2, 32, 16 and 2 digits, neither id all
/// zeros (W3C Trace Context).
fn trace_parts(tp: &str) -> (&str, &str) {
    let parts: Vec<&str> = tp.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    assert!(
        parts.len() == 4
            && parts[0] == "00"
            && hex(parts[1], 32)
            && hex(parts[2], 16)
            && hex(parts[3], 2)
            && parts[1].bytes().any(|b| b != b'0')
            && parts[2].bytes().any(|b| b != b'0'),
        "not a W3C traceparent: {tp}"
    );
    (parts[1], parts[2])
}

#[tokio::test]
async fn a_server_of_another_project_receives_one_key_one_request_id_one_trace() {
    let Some(server) = httpbin().await else {
        return;
    };
    let base = server.url("");
    let http = reqwest::Client::new();
    let echoes = Mutex::new(Vec::new());
    let status = echoed(&http, &base, &echoes).await;
    assert_eq!(status.map_err(|e| e.to_string()), Ok(200));
    let echoes = echoes.into_inner().unwrap();
    assert_eq!(echoes.len(), 2, "one echo per attempt: {echoes:?}");
    let (first, second) = (&echoes[0], &echoes[1]);
    assert_eq!(first["data"], "order=1042", "{first}");

    let key = header(first, "Idempotency-Key");
    assert!(!key.is_empty());
    assert_eq!(header(second, "Idempotency-Key"), key, "the one key");
    let request_id = header(first, "X-Request-Id");
    assert_eq!(
        header(second, "X-Request-Id"),
        request_id,
        "the one request id"
    );
    assert_eq!(header(first, "X-Attempt"), "1");
    assert_eq!(header(second, "X-Attempt"), "2");

    let (trace_1, parent_1) = trace_parts(header(first, "Traceparent"));
    let (trace_2, parent_2) = trace_parts(header(second, "Traceparent"));
    assert_eq!(trace_1, trace_2, "the one trace");
    assert_ne!(parent_1, parent_2, "a parent of each attempt's own");

    for echo in [first, second] {
        let ms: u64 = header(echo, "X-Timeout-Ms")
            .parse()
            .unwrap_or_else(|e| panic!("X-Timeout-Ms of {echo}: {e}"));
        assert!(
            ms > 0 && ms <= 2_000,
            "within the attempt's timeout: {ms} ms"
        );
    }
}
