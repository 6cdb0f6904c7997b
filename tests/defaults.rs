//! The README's table of defaults, end to end: what a bare `#[resilient]` GET does against a
//! server that fails, the `max_retry_after` cap on its own (under a deadline long enough not
//! to decide first), and a rate limit given only its `rate`.

use std::time::Duration;

use resilience_fault_server::{Action, FaultServer, Script};
use resilience_runtime::{Error, ErrorKind, resilient};
use tokio::time::Instant;

mod support;

/// Nothing but the attribute: `timeout = "10s"`, `deadline = "30s"`, `max_attempts = 3`,
/// `retry_on = [connect, reset, timeout, 408, 429, 502, 503, 504]`, a budget of its own.
#[resilient]
async fn plain(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[tokio::test(start_paused = true)]
async fn a_bare_get_retries_what_the_defaults_say_and_nothing_else() {
    let c = reqwest::Client::new();
    // 503 is in the default retry_on: three attempts.
    let unavailable = FaultServer::start(Script::always(Action::status(503))).await;
    let e = plain(&c, &unavailable.url("/")).await.unwrap_err();
    assert_eq!((e.attempts(), unavailable.count()), (3, 3), "{e}");
    // 500 is not: one.
    let broken = FaultServer::start(Script::always(Action::status(500))).await;
    let e = plain(&c, &broken.url("/")).await.unwrap_err();
    assert_eq!((e.attempts(), broken.count()), (1, 1), "{e}");
    // 404 is not either.
    let missing = FaultServer::start(Script::always(Action::status(404))).await;
    plain(&c, &missing.url("/")).await.unwrap_err();
    assert_eq!(missing.count(), 1);
}

/// A server that never answers: attempts of 10 s each, backoff between them, and the call
/// ends at its 30 s deadline, not a moment later, the last attempt cut short.
#[tokio::test(start_paused = true)]
async fn a_bare_get_ends_at_the_default_deadline() {
    let server = FaultServer::start(Script::always(Action::stall())).await;
    let started = Instant::now();
    let e = plain(&reqwest::Client::new(), &server.url("/"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DeadlineExceeded, "{e}");
    assert_eq!(started.elapsed(), Duration::from_secs(30), "{e}");
    assert_eq!((e.attempts(), server.count()), (3, 3), "{e}");
}

/// `max_retry_after` left at its default, 30 s, under a deadline of two minutes: a
/// `Retry-After: 31` ends the call at once; `Retry-After: 30` is waited out.
#[resilient(deadline = "120s", budget = false)]
async fn patient(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[tokio::test(start_paused = true)]
async fn the_default_retry_after_cap_is_30_seconds() {
    let c = reqwest::Client::new();
    let too_long = FaultServer::start(vec![Action::status(503).retry_after(31)]).await;
    let started = Instant::now();
    let e = patient(&c, &too_long.url("/")).await.unwrap_err();
    assert_eq!(too_long.count(), 1, "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    let at_the_cap = FaultServer::start(vec![Action::status(503).retry_after(30)]).await;
    assert_eq!(patient(&c, &at_the_cap.url("/")).await.unwrap(), 200);
    let seen = at_the_cap.requests();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at - seen[0].at;
    assert!(
        gap >= Duration::from_secs(30) && gap < Duration::from_secs(31),
        "waited {gap:?}"
    );
}

/// `rate_limit(rate = 5)`: `per = "1s"`, `burst = rate`, `max_wait = "0ms"`. Six calls at once:
/// five go, the sixth is refused without a request; a fifth of a second later, one more goes.
#[resilient(max_attempts = 1, budget = false, rate_limit(rate = 5))]
async fn limited(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_given_only_its_rate() {
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let c = reqwest::Client::new();
    let url = server.url("/");
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let (c, url) = (c.clone(), url.clone());
        calls.spawn(async move { limited(&c, &url).await });
    }
    let results = calls.join_all().await;
    let refused: Vec<&Error> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(refused.len(), 1, "{results:?}");
    assert_eq!(refused[0].kind(), ErrorKind::RateLimited);
    assert!(refused[0].is_rejected());
    assert_eq!(server.count(), 5);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(limited(&c, &url).await.unwrap(), 200);
    assert_eq!(server.count(), 6);
}

/// README, "Limits": editing `resilience.toml` rebuilds the crates that use it. The file beside
/// `Cargo.toml`, and the manifest (whose `[package.metadata.resilience] config` may name
/// another), are among the files the compiler says this crate was built from.
#[test]
fn editing_the_policy_file_rebuilds_the_crate() {
    support::assert_built_from(&["resilience.toml", "Cargo.toml"]);
}

/// The defaults but the budget (off, so that calls of other tests of this binary, running at
/// once, cannot spend this function's retries).
#[resilient(budget = false)]
async fn unbudgeted(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// The default backoff, exponential from 100 ms doubling with equal jitter: the wait before the
/// second attempt is 50 to 100 ms, before the third 100 to 200 ms (never a retry at once
/// after its failure: "retrying right after a connect timeout can time out again; leave an
/// interval"), and the waits differ from call to call (jitter: callers that failed together
/// do not come back together).
#[tokio::test(start_paused = true)]
async fn the_default_backoff_is_exponential_with_equal_jitter() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    let mut firsts = Vec::new();
    for _ in 0..8 {
        server.clear();
        let e = unbudgeted(&c, &server.url("/")).await.unwrap_err();
        assert_eq!(e.attempts(), 3, "{e}");
        let at: Vec<Instant> = server.requests().iter().map(|r| r.at).collect();
        let (first, second) = (at[1] - at[0], at[2] - at[1]);
        assert!(
            (Duration::from_millis(50)..=Duration::from_millis(100)).contains(&first),
            "{first:?}"
        );
        assert!(
            (Duration::from_millis(100)..=Duration::from_millis(200)).contains(&second),
            "{second:?}"
        );
        firsts.push(first);
    }
    firsts.sort();
    firsts.dedup();
    assert!(firsts.len() > 1, "the same wait every time: {firsts:?}");
}

/// The default client settings' connect timeout, 3 s, below the default attempt timeout
/// (10 s): a connect that stalls ends at 3 s as a connect failure (never sent), which every
/// method may retry, instead of using the attempt's whole 10 s.
#[tokio::test(start_paused = true)]
async fn the_settings_connect_timeout_ends_a_stalled_connect_at_3s() {
    use resilience_runtime::ClientSettings;
    assert!(ClientSettings::DEFAULT.connect_timeout < Duration::from_secs(10));
    let hole = resilience_fault_server::Blackhole::new();
    let c = ClientSettings::DEFAULT.build().unwrap();
    let started = Instant::now();
    let e = unbudgeted(&c, &hole.url("/")).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.class(), Some(resilience_runtime::Class::Connect), "{e}");
    assert_eq!(e.attempts(), 3, "{e}");
    // Three connects of 3 s and two waits of at most 100 and 200 ms (each timer on a 1 ms
    // tick).
    assert!(
        took >= Duration::from_secs(9) && took <= Duration::from_millis(9_310),
        "{took:?}"
    );
}
