//! `resilience.toml` layers at run time: built-in < [defaults] < [policies.NAME] < inline, shared
//! state defined in the file, and `client!` building the file's client.

use std::time::Duration;

use resilience_fault_server::{Action, Blackhole, FaultServer, Script};
use resilience_runtime::{Error, ErrorKind, RequestBuilderExt as _, client, resilient};

mod support;

/// Only [defaults]: 2 attempts.
#[resilient(config = "tests/policies/precedence.toml")]
async fn defaults_only(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url)
        .resilient()
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// [policies.search] over [defaults]: 4 attempts.
#[resilient(config = "tests/policies/precedence.toml", policy = "search")]
async fn search(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url)
        .resilient()
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// Inline over the policy: 3 attempts.
#[resilient(
    config = "tests/policies/precedence.toml",
    policy = "search",
    max_attempts = 3
)]
async fn search_inline(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url)
        .resilient()
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// A keyed POST policy with a breaker from the file.
#[resilient(config = "tests/policies/precedence.toml", policy = "payments")]
async fn pay(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.post(url)
        .body("amount=1")
        .resilient()
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// A policy and a breaker whose names hold the characters of the compiled policy's own
/// string form: they reach the runtime as written.
#[resilient(
    config = "tests/policies/odd_names.toml",
    policy = "pay,ments: \"ü\" 1:x \\"
)]
async fn odd_names(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url)
        .resilient()
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

fn always_503() -> Script {
    Script::always(Action::status(503))
}

#[tokio::test(start_paused = true)]
async fn each_layer_overrides_the_one_below() {
    let c = reqwest::Client::new();
    for (name, want, call) in [
        ("[defaults]", 2, 0),
        ("[policies.search]", 4, 1),
        ("inline", 3, 2),
    ] {
        let server = FaultServer::start(always_503()).await;
        let url = server.url("/");
        let e = match call {
            0 => defaults_only(&c, &url).await,
            1 => search(&c, &url).await,
            _ => search_inline(&c, &url).await,
        }
        .unwrap_err();
        assert_eq!(e.attempts(), want, "{name}: {e}");
        assert_eq!(server.count(), want as usize, "{name}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_policy_from_the_file_keys_its_posts_and_shares_its_breaker() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(always_503()).await;
    let e = pay(&c, &server.url("/charges")).await.unwrap_err();
    assert_eq!(e.attempts(), 3);
    let keys: Vec<Option<String>> = server
        .requests()
        .iter()
        .map(|s| s.idempotency_key().map(str::to_owned))
        .collect();
    assert!(
        keys[0].is_some() && keys.iter().all(|k| *k == keys[0]),
        "{keys:?}"
    );
    // 3 failures seen; the 4th opens the breaker (min_calls 4, window 4, rate 0.5).
    let _ = pay(&c, &server.url("/charges")).await.unwrap_err();
    let before = server.count();
    let e = pay(&c, &server.url("/charges")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CircuitOpen, "{e}");
    assert_eq!(server.count(), before, "an open breaker sends nothing");
}

#[tokio::test]
async fn client_from_the_file_times_out_connects_fast() {
    let http = client!("fast", config = "tests/policies/precedence.toml")
        .build()
        .unwrap();
    let hole = Blackhole::new();
    let started = std::time::Instant::now();
    let e = http.get(hole.url("/")).send().await.unwrap_err();
    assert!(e.is_connect(), "{e:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn client_pool_drops_idle_sockets_before_the_server_does() {
    // The server closes keep-alive connections idle for 300 ms; the client's pool lets go of
    // them after 150 ms, so it never writes into a socket the server already closed.
    let settings = client!("fast", config = "tests/policies/precedence.toml");
    assert_eq!(settings.pool_idle_timeout, Duration::from_millis(150));
    let http = settings.build().unwrap();
    let server =
        FaultServer::start(Script::always(Action::ok()).idle_timeout(Duration::from_millis(300)))
            .await;
    for _ in 0..3 {
        http.get(server.url("/"))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(350)).await;
    }
    assert_eq!(server.count(), 3);
    assert_eq!(
        server.connections(),
        3,
        "a fresh connection after each idle period"
    );
}

#[tokio::test(start_paused = true)]
async fn names_with_any_characters_reach_the_runtime_as_written() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(always_503()).await;
    let e = odd_names(&c, &server.url("/")).await.unwrap_err();
    // The file's max_attempts, read back from the compiled policy.
    assert_eq!(e.attempts(), 3, "{e}");
    assert_eq!(server.count(), 3);
    let policy = resilience_runtime::metrics::policy("pay,ments: \"ü\" 1:x \\")
        .expect("the policy, under its name as written");
    assert_eq!(policy.failed_with_retry, 1, "{policy:?}");
    let breaker = resilience_runtime::metrics::breaker("br,eak:er \"ü\"")
        .expect("the breaker, under its name as written");
    assert_eq!(breaker.window_failures, 3, "{breaker:?}");
}

#[derive(Clone)]
struct Refund {
    id: String,
    cents: u64,
}

/// `idempotency_key = "refund.id"` in the file: the key is the parameter's field, the same on
/// every attempt.
#[resilient(config = "tests/policies/precedence.toml", policy = "refunds")]
async fn refund(c: &reqwest::Client, url: &str, refund: &Refund) -> Result<String, Error> {
    Ok(c.post(url)
        .body(format!("cents={}", refund.cents))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[tokio::test(start_paused = true)]
async fn a_key_parameter_named_in_the_file() {
    let server = FaultServer::start(vec![Action::status(503)]).await;
    let r = Refund {
        id: "rf_2026_0042".to_owned(),
        cents: 1250,
    };
    refund(&reqwest::Client::new(), &server.url("/refunds"), &r)
        .await
        .unwrap();
    let seen = server.requests();
    assert_eq!(seen.len(), 2, "the 503 retried with the key");
    assert!(
        seen.iter()
            .all(|s| s.idempotency_key() == Some("rf_2026_0042"))
    );
}

/// A file named by `config = "…"` is tracked as the default one is: editing it rebuilds the
/// crate (README, "Limits").
#[test]
fn editing_a_named_policy_file_rebuilds_the_crate() {
    support::assert_built_from(&[
        "tests/policies/precedence.toml",
        "tests/policies/odd_names.toml",
    ]);
}

/// [policies.paced]'s backoff with only its delay changed inline: still constant, unjittered.
#[resilient(
    config = "tests/policies/precedence.toml",
    policy = "paced",
    backoff(initial = "100ms")
)]
async fn paced(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

/// "A `backoff` table merges key by key over a wider layer's": the inline delay, and the
/// file's constant kind and no jitter, so the attempts are exactly 100 ms apart.
#[tokio::test(start_paused = true)]
async fn an_inline_backoff_table_keeps_what_it_leaves_out() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    let e = paced(&c, &server.url("/")).await.unwrap_err();
    assert_eq!(e.attempts(), 3, "{e}");
    let seen = server.requests();
    assert_eq!(seen[1].at - seen[0].at, Duration::from_millis(100));
    assert_eq!(seen[2].at - seen[1].at, Duration::from_millis(100));
}

/// [policies.queued]'s bulkhead waits 5 s for a slot; inline, a table of its own.
#[resilient(config = "tests/policies/precedence.toml", policy = "queued")]
async fn queued_as_filed(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[resilient(
    config = "tests/policies/precedence.toml",
    policy = "queued",
    bulkhead(max_concurrent = 1)
)]
async fn queued_inline(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

/// "A `bulkhead` … table replaces the one below it whole": the inline table leaves out
/// `max_wait`, which is then the built-in `0ms` (refused at once), not the file's 5 s.
#[tokio::test(start_paused = true)]
async fn an_inline_bulkhead_table_replaces_the_files_whole() {
    let c = reqwest::Client::new();
    let slow = FaultServer::start(Script::always(
        Action::ok().after(Duration::from_millis(500)),
    ))
    .await;
    let url = slow.url("/");
    // As filed: the second call waits for the first's slot, and both answer.
    let (a, b) = tokio::join!(queued_as_filed(&c, &url), queued_as_filed(&c, &url));
    assert_eq!((a.unwrap(), b.unwrap()), ("ok".to_owned(), "ok".to_owned()));
    // Inline: the second is refused at once.
    let (a, b) = tokio::join!(queued_inline(&c, &url), async {
        slow.wait_for(3).await;
        queued_inline(&c, &url).await
    });
    assert_eq!(a.unwrap(), "ok");
    let e = b.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BulkheadFull, "{e}");
}

#[resilient(
    config = "tests/policies/precedence.toml",
    policy = "guarded",
    breaker(
        failure_rate = 1.0,
        min_calls = 1,
        window = 1,
        open_for = "1h",
        half_open_calls = 1
    )
)]
async fn guarded_inline(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

/// "A `breaker` … table replaces the one below it whole": the inline breaker names no state,
/// so it is the function's own, not the file's `pf_guarded` with the inline settings merged in
/// (which would share one breaker with every function of the policy).
#[tokio::test(start_paused = true)]
async fn an_inline_breaker_table_replaces_the_files_whole() {
    let c = reqwest::Client::new();
    let down = FaultServer::start(Script::always(Action::status(503))).await;
    assert!(guarded_inline(&c, &down.url("/")).await.is_err());
    let own = resilience_runtime::breakers::state("policy_file::guarded_inline").unwrap();
    assert_eq!(
        own.state,
        resilience_runtime::breakers::BreakerState::Open,
        "its own settings: one failure in a window of one opens it"
    );
    assert!(
        resilience_runtime::breakers::state("pf_guarded").is_err(),
        "the file's named breaker is not this function's"
    );
}

/// A key named by a parameter whose name is a keyword (`r#type`): inline as `r#type`, from the
/// file as `type`. Both compile, and both send the parameter's value as the key on every
/// attempt.
#[resilient(
    idempotency_key = r#type,
    timeout = "1s",
    max_attempts = 2,
    backoff(initial = "1ms", max = "2ms"),
    budget = false
)]
async fn keyed_by_type_inline(
    c: &reqwest::Client,
    url: &str,
    r#type: String,
) -> Result<String, Error> {
    Ok(c.post(url).send().await?.error_for_status()?.text().await?)
}

#[resilient(config = "tests/policies/odd_names.toml", policy = "keyed_by_type")]
async fn keyed_by_type_in_the_file(
    c: &reqwest::Client,
    url: &str,
    r#type: String,
) -> Result<String, Error> {
    Ok(c.post(url).send().await?.error_for_status()?.text().await?)
}

#[tokio::test(start_paused = true)]
async fn a_key_named_by_a_raw_parameter_is_its_value() {
    let c = reqwest::Client::new();
    for inline in [true, false] {
        let server = FaultServer::start(Script::sequence([Action::status(503)])).await;
        let key = format!("order-7-{inline}");
        let got = if inline {
            keyed_by_type_inline(&c, &server.url("/"), key.clone()).await
        } else {
            keyed_by_type_in_the_file(&c, &server.url("/"), key.clone()).await
        };
        assert_eq!(got.unwrap(), "ok");
        let keys: Vec<_> = server
            .requests()
            .iter()
            .map(|r| r.idempotency_key().map(str::to_owned))
            .collect();
        assert_eq!(keys, [Some(key.clone()), Some(key)]);
    }
}
