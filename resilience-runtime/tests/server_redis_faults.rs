//! The idempotency layer when its Redis fails: each test starts its own redis-server child on
//! a free loopback port, then kills it, freezes it (SIGSTOP) or restarts it under the layer.
//! The last test kills a real child server process (`kill -9`) mid-handler.
//!
//! Needs `redis-server` on the PATH (`.ci/redis.sh` installs it). Without it the tests are
//! skipped, unless `CI` is set: then they fail.

#![cfg(feature = "redis")]

mod redis_support;
mod server_support;

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use redis_support::{BlackHole, Redis};
use resilience_runtime::server::{IdempotencyLayer, RedisStore, record_key};
use server_support::{Store, count, fresh_key, post, post_slow_until_done, serve};
use tokio::time::Instant;

const PREFIX: &str = "faults:";

async fn connect(redis: &Redis) -> Store {
    Arc::new(
        RedisStore::connect(&redis.url())
            .await
            .expect("connect")
            .prefix(PREFIX),
    )
}

#[tokio::test]
async fn a_killed_redis_is_answered_503_fast() {
    let Some(mut redis) = Redis::start().await else {
        return;
    };
    let store = connect(&redis).await;
    let app = serve(&store, IdempotencyLayer::new(store.clone())).await;
    assert_eq!(
        post(&app.url("/orders"), Some(&fresh_key()), "x")
            .await
            .status,
        201
    );
    redis.kill();
    for _ in 0..5 {
        let started = Instant::now();
        let refused = post(&app.url("/orders"), Some(&fresh_key()), "x").await;
        assert_eq!(refused.status, 503, "{refused:?}");
        assert_eq!(refused.header("retry-after"), Some("1"));
        // Regression: each of these took about 9.5 s (the connection's own reconnect loop).
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(count(&app.runs.orders), 1);
}

#[tokio::test]
async fn redis_lost_while_the_handler_runs_never_leads_to_a_second_run() {
    let Some(mut redis) = Redis::start().await else {
        return;
    };
    let store = connect(&redis).await;
    let app = serve(&store, IdempotencyLayer::new(store.clone())).await;
    let key = fresh_key();
    let url = app.url("/gated");
    let first = tokio::spawn({
        let (url, key) = (url.clone(), key.clone());
        async move { post(&url, Some(&key), "x").await }
    });
    server_support::wait_until(|| count(&app.runs.gated) == 1).await;
    redis.kill();
    app.gate.add_permits(1);
    let first = first.await.unwrap();
    assert_eq!((first.status, first.body.as_str()), (201, "gated 1"));

    // Redis is gone: the instance that ran the handler replays what it kept.
    let kept = post(&url, Some(&key), "x").await;
    assert_eq!((kept.status, kept.replayed()), (201, true), "{kept:?}");

    // Redis back, empty (no persistence): the kept response is written to it.
    redis.restart().await;
    let redis_key = format!(
        "{PREFIX}{}",
        record_key(&reqwest::Method::POST, "/gated", &key, None)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.get(&redis_key).await.is_none() {
        assert!(Instant::now() < deadline, "never written back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Another instance sharing that Redis replays it too.
    let other_store = connect(&redis).await;
    let other = serve(&other_store, IdempotencyLayer::new(other_store.clone())).await;
    let replay = post(&other.url("/gated"), Some(&key), "x").await;
    assert_eq!(
        (replay.status, replay.replayed(), replay.body.as_str()),
        (201, true, "gated 1")
    );
    assert_eq!(count(&app.runs.gated) + count(&other.runs.gated), 1);
}

/// A Redis full under `noeviction` (the policy the README asks for) refuses every write: a
/// new key is answered 503, never run without its claim; a handler already running keeps its
/// claim (a renewal needs no memory), and its answer waits in memory, replayed by its
/// instance, until the Redis has room again; then it is written, and replayed by every
/// instance. Run once.
#[tokio::test]
async fn a_full_redis_refuses_new_keys_and_keeps_a_running_answer_until_it_has_room() {
    let Some(redis) = Redis::start_with(&["--maxmemory-policy", "noeviction"]).await else {
        return;
    };
    let store = connect(&redis).await;
    let layer = |store: &Store| IdempotencyLayer::new(store.clone()).lease(Duration::from_secs(1));
    let app = serve(&store, layer(&store)).await;
    let other_store = connect(&redis).await;
    let other = serve(&other_store, layer(&other_store)).await;
    let key = fresh_key();
    let first = tokio::spawn({
        let url = app.url("/gated");
        let key = key.clone();
        async move { post(&url, Some(&key), "x").await }
    });
    server_support::wait_until(|| count(&app.runs.gated) == 1).await;

    // Full: any memory in use is over a limit of one byte.
    let limit = |bytes: &str| {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(bytes)
            .clone()
    };
    redis.run(&limit("1")).await.expect("CONFIG SET");
    let refused_write = redis.run(redis::cmd("SET").arg("probe").arg("x")).await;
    assert!(
        refused_write
            .as_ref()
            .is_err_and(|e| e.to_string().contains("OOM")),
        "{refused_write:?}"
    );

    let refused = post(&app.url("/orders"), Some(&fresh_key()), "x").await;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(count(&app.runs.orders), 0);

    app.gate.add_permits(1);
    let first = first.await.unwrap();
    assert_eq!((first.status, first.body.as_str()), (201, "gated 1"));
    let kept = post(&app.url("/gated"), Some(&key), "x").await;
    assert_eq!(
        (kept.status, kept.replayed(), kept.body.as_str()),
        (201, true, "gated 1"),
        "replayed from memory by the instance that ran it"
    );
    // Past the lease (1 s here): the claim is renewed, and the other instance waits.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let elsewhere = post(&other.url("/gated"), Some(&key), "x").await;
    assert_eq!(elsewhere.status, 409, "{elsewhere:?}");

    // Room again: the answer is written, and replayed everywhere.
    redis.run(&limit("0")).await.expect("CONFIG SET");
    let redis_key = format!(
        "{PREFIX}{}",
        record_key(&reqwest::Method::POST, "/gated", &key, None)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    // A completed record is kind 2 (its second byte); a claim is kind 0.
    while redis
        .get(&redis_key)
        .await
        .is_none_or(|v| v.get(1) != Some(&2))
    {
        assert!(Instant::now() < deadline, "never written back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let replay = post(&other.url("/gated"), Some(&key), "x").await;
    assert_eq!(
        (replay.status, replay.replayed(), replay.body.as_str()),
        (201, true, "gated 1")
    );
    assert_eq!(count(&app.runs.gated) + count(&other.runs.gated), 1);
}

#[tokio::test]
async fn a_request_refused_while_redis_is_frozen_leaves_no_claim_behind() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let store = connect(&redis).await;
    let layer = IdempotencyLayer::new(store.clone()).store_timeout(Duration::from_millis(200));
    let app = serve(&store, layer).await;
    // A first request, so that the connection is up before the freeze.
    assert_eq!(
        post(&app.url("/orders"), Some(&fresh_key()), "x")
            .await
            .status,
        201
    );
    let key = fresh_key();
    redis.signal("-STOP");
    let started = Instant::now();
    let refused = post(&app.url("/orders"), Some(&key), "x").await;
    let took = started.elapsed();
    redis.signal("-CONT");
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(count(&app.runs.orders), 1, "not run without a claim");

    // Regression: the claim command queued in the frozen Redis ran on thaw and held the key
    // for the whole lease (10 s of 409s). Past the 1 s the store is taken as down, the retry
    // this 503 invited runs the handler.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let deadline = Instant::now() + Duration::from_secs(3);
    let retried = loop {
        let r = post(&app.url("/orders"), Some(&key), "x").await;
        if r.status != 503 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (retried.status, retried.replayed(), retried.body.as_str()),
        (201, false, "order 2: x"),
        "{retried:?}"
    );
}

/// Not a test on its own: the child server of the next test, run when the environment says so.
#[test]
fn child_server() {
    let Ok(url) = std::env::var("RESILIENCE_CHILD_REDIS_URL") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store: Store = Arc::new(
            RedisStore::connect(&url)
                .await
                .expect("connect")
                .prefix(PREFIX),
        );
        async fn slow() -> (axum::http::StatusCode, &'static str) {
            println!("handler started");
            let _ = std::io::stdout().flush();
            tokio::time::sleep(Duration::from_secs(60)).await;
            (axum::http::StatusCode::CREATED, "child")
        }
        let app = axum::Router::new()
            .route("/slow", axum::routing::post(slow))
            .layer(IdempotencyLayer::new(store).lease(Duration::from_millis(300)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening {}", listener.local_addr().unwrap());
        let _ = std::io::stdout().flush();
        axum::serve(listener, app).await.unwrap();
    });
}

#[tokio::test]
async fn a_server_killed_mid_handler_frees_the_key_when_the_lease_expires() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_server", "--nocapture", "--test-threads=1"])
        .env("RESILIENCE_CHILD_REDIS_URL", redis.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the child server");
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let next_line = async |lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
                           prefix: &str| {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(30), lines.recv())
                .await
                .expect("the child server said nothing for 30 s")
                .expect("the child server ended");
            // The harness may print `test child_server ... ` on the same line first.
            if let Some(at) = line.find(prefix) {
                return line[at + prefix.len()..].trim().to_owned();
            }
        }
    };
    let addr = next_line(&mut lines, "listening").await;
    let key = fresh_key();
    let url = format!("http://{addr}/slow");
    let in_flight = tokio::spawn({
        let key = key.clone();
        async move {
            server_support::client()
                .post(&url)
                .header("idempotency-key", key)
                .header("x-sleep-ms", "0")
                .body("x")
                .send()
                .await
        }
    });
    next_line(&mut lines, "handler started").await;
    child.kill().expect("kill -9 the child server");
    child.wait().unwrap();
    assert!(in_flight.await.unwrap().is_err(), "the server died");

    // Another instance over the same Redis: 409 while the dead one's lease runs, then the
    // retry runs the handler again. At least once, not exactly once: the layer cannot know
    // how far the dead handler got.
    let store = connect(&redis).await;
    let app = serve(&store, IdempotencyLayer::new(store.clone())).await;
    let busy = post_slow_until_done(&app.url("/slow"), &key, 0).await;
    assert_eq!(
        (busy.status, busy.replayed(), busy.body.as_str()),
        (201, false, "slow 1"),
        "{busy:?}"
    );
    assert_eq!(count(&app.runs.slow), 1);
}

/// A rate limit shared through a Redis that freezes, then dies: the first decision after each
/// failure waits for Redis (at most 250 ms), the ones in the next second are local at once,
/// instead of each call waiting for a Redis known not to answer. Once Redis is back and the
/// second has passed, Redis decides again. (The only test of this binary that gives the
/// process its rate-limit Redis.)
#[tokio::test]
async fn a_shared_rate_limit_stops_waiting_for_a_redis_known_down() {
    use resilience_runtime::ratelimit::{self, RateLimitSpec, RateLimitStore, RateLimiter};

    let Some(mut redis) = Redis::start().await else {
        return;
    };
    let client = redis::Client::open(redis.url()).unwrap();
    let conn = redis::aio::ConnectionManager::new(client)
        .await
        .expect("connect");
    assert!(ratelimit::use_redis(conn));
    let limiter = std::sync::Arc::new(RateLimiter::new(
        "faults_limit",
        RateLimitSpec {
            rate: 1000,
            per: Duration::from_secs(1),
            burst: 1000,
            max_wait: Duration::ZERO,
            store: RateLimitStore::Redis,
        },
    ));
    let far = || Instant::now() + Duration::from_secs(10);
    assert_eq!(limiter.acquire_by(far()).await, Ok(()));
    assert_eq!(limiter.snapshot().local_fallbacks, 0, "Redis decided");

    for fault in ["freeze", "kill"] {
        match fault {
            "freeze" => redis.signal("-STOP"),
            _ => redis.kill(),
        }
        if fault == "freeze" {
            // Calls with a few milliseconds left, far apart, each wait a millisecond or so for
            // Redis: 250 ms between them is not 250 ms of waiting, and Redis is not taken as
            // down for them.
            let before = limiter.snapshot();
            for _ in 0..2 {
                let deadline = Instant::now() + Duration::from_millis(2);
                assert_eq!(limiter.acquire_by(deadline).await, Ok(()));
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            assert_eq!(
                limiter.snapshot().store_unanswered,
                before.store_unanswered,
                "two short waits 300 ms apart"
            );
        }
        let before = limiter.snapshot();
        if fault == "freeze" {
            // A call whose deadline comes before Redis's 250 ms waits for Redis half its time,
            // then the local limit decides, before its deadline; one such call does not take
            // Redis as down, but calls left unanswered for 250 ms in a row do, and the next
            // ones do not wait for it.
            let started = Instant::now();
            let deadline = started + Duration::from_millis(100);
            assert_eq!(limiter.acquire_by(deadline).await, Ok(()));
            assert!(started.elapsed() < Duration::from_millis(100));
            let after_one = limiter.snapshot();
            assert_eq!(after_one.store_unanswered, before.store_unanswered);
            assert_eq!(after_one.local_fallbacks, before.local_fallbacks + 1);
            for _ in 0..10 {
                let deadline = Instant::now() + Duration::from_millis(100);
                assert_eq!(limiter.acquire_by(deadline).await, Ok(()));
            }
            assert_eq!(
                limiter.snapshot().store_unanswered,
                before.store_unanswered + 1,
                "taken as down after 250 ms of unanswered calls"
            );
            let quick = Instant::now();
            let deadline = quick + Duration::from_millis(100);
            assert_eq!(limiter.acquire_by(deadline).await, Ok(()));
            assert!(
                quick.elapsed() < Duration::from_millis(10),
                "{:?}",
                quick.elapsed()
            );
            // Past the second it is taken as down for, Redis is asked again.
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        let before = limiter.snapshot();
        for _ in 0..5 {
            assert_eq!(limiter.acquire_by(far()).await, Ok(()), "{fault}");
        }
        let after = limiter.snapshot();
        assert_eq!(
            after.local_fallbacks - before.local_fallbacks,
            5,
            "{fault}: {after:?}"
        );
        assert_eq!(
            after.store_unanswered - before.store_unanswered,
            1,
            "{fault}: Redis asked once, then taken as down: {after:?}"
        );
        if fault == "freeze" {
            // Past the second again, twenty calls at once: one asks the frozen Redis (and waits
            // its 250 ms), the others decide locally at once, instead of each waiting.
            tokio::time::sleep(Duration::from_millis(1100)).await;
            let mut calls = tokio::task::JoinSet::new();
            for _ in 0..20 {
                let limiter = limiter.clone();
                calls.spawn(async move {
                    let t = Instant::now();
                    let got = limiter
                        .acquire_by(Instant::now() + Duration::from_secs(10))
                        .await;
                    (got, t.elapsed())
                });
            }
            let mut waited = 0;
            while let Some(done) = calls.join_next().await {
                let (got, took) = done.unwrap();
                assert_eq!(got, Ok(()));
                if took >= Duration::from_millis(200) {
                    waited += 1;
                }
            }
            assert_eq!(waited, 1, "one call asked the frozen Redis");
            // An annotated call whose limit waits for the frozen Redis: the wait is not its
            // attempt's time (the attempt's 100 ms start once it is admitted; counted from
            // before the wait, it had timed out at its first poll).
            let e = with_limit().await;
            assert_eq!(e.as_ref().ok(), Some(&7), "{e:?}");
        }
        match fault {
            "freeze" => redis.signal("-CONT"),
            _ => redis.restart().await,
        }
        // Past the second, Redis decides again (the connection may take a few tries).
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let give_up = Instant::now() + Duration::from_secs(10);
        loop {
            let before = limiter.snapshot().local_fallbacks;
            assert_eq!(limiter.acquire_by(far()).await, Ok(()));
            if limiter.snapshot().local_fallbacks == before {
                break;
            }
            assert!(Instant::now() < give_up, "{fault}: still local 10 s after");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Two permits Redis spaces 100 ms apart (10 a second, a burst of 1), both answered 150 ms
    // late (Redis frozen for that long): the second is not used before its time, though the
    // wait Redis gave it has passed by the time its answer comes.
    let spaced = std::sync::Arc::new(RateLimiter::new(
        "faults_spaced",
        RateLimitSpec {
            rate: 10,
            per: Duration::from_secs(1),
            burst: 1,
            max_wait: Duration::from_secs(1),
            store: RateLimitStore::Redis,
        },
    ));
    redis.signal("-STOP");
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let spaced = spaced.clone();
        calls.spawn(async move {
            let got = spaced
                .acquire_by(Instant::now() + Duration::from_secs(10))
                .await;
            (got, Instant::now())
        });
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    redis.signal("-CONT");
    let mut given = Vec::new();
    while let Some(done) = calls.join_next().await {
        let (got, at) = done.unwrap();
        assert_eq!(got, Ok(()));
        given.push(at);
    }
    given.sort();
    assert_eq!(spaced.snapshot().local_fallbacks, 0, "Redis decided both");
    let gap = given[1] - given[0];
    assert!(
        gap >= Duration::from_millis(95),
        "permits {gap:?} apart, {:?} after the start",
        given[0] - started
    );
}

#[resilience_runtime::resilient(
    method = GET,
    timeout = "100ms",
    deadline = "5s",
    max_attempts = 1,
    budget = false,
    rate_limit = { name = "faults_fn_limit", rate = 1000, burst = 1000, store = "redis" },
)]
async fn with_limit() -> Result<u32, resilience_runtime::Error> {
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok(7)
}

/// A Redis restarted without its data while a handler runs: the handler's next renewal finds
/// its claim gone and claims the key again; one that fails (the first command after the
/// restart, on a connection that has not noticed it yet) is tried again 100 ms later, not a
/// third of the lease later. A repeat through another instance after that gets 409, and the
/// handler runs once.
#[tokio::test]
async fn after_a_restart_the_claim_is_made_again_within_a_renewal_and_a_retry() {
    let Some(mut redis) = Redis::start().await else {
        return;
    };
    let lease = Duration::from_secs(3);
    let store = connect(&redis).await;
    let app = serve(&store, IdempotencyLayer::new(store.clone()).lease(lease)).await;
    let key = fresh_key();
    let first = tokio::spawn({
        let (u, k) = (app.url("/gated"), key.clone());
        async move { post(&u, Some(&k), "x").await }
    });
    server_support::wait_until(|| count(&app.runs.gated) == 1).await;
    let claimed = Instant::now();
    // Just after the first renewal (a third of the lease after the claim).
    tokio::time::sleep_until(claimed + Duration::from_millis(1150)).await;
    redis.restart().await;
    let other_store = connect(&redis).await;
    let other = serve(
        &other_store,
        IdempotencyLayer::new(other_store.clone()).lease(lease),
    )
    .await;
    // The second renewal (at 2 s) fails on the old connection; its retry at 2.1 s claims the
    // key again. Asked at 2.6 s: the key is taken (it was free until 3 s before).
    tokio::time::sleep_until(claimed + Duration::from_millis(2600)).await;
    let elsewhere = tokio::spawn({
        let (u, k) = (other.url("/gated"), key.clone());
        async move { post(&u, Some(&k), "x").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ran_elsewhere = count(&other.runs.gated);
    other.gate.add_permits(1);
    app.gate.add_permits(1);
    let elsewhere = elsewhere.await.unwrap();
    assert_eq!(ran_elsewhere, 0, "the handler ran a second time");
    assert_eq!(elsewhere.status, 409, "{}", elsewhere.body);
    assert_eq!(first.await.unwrap().status, 201);
}

/// A Redis killed while a handler runs, its answer kept in memory, then back without its data
/// after three seconds: the answer is written back within a few tenths of a second (the
/// write-back's retries and the connection's at most 100 ms apart; they waited up to 1 s and
/// 3.2 s), and a repeat through another instance then gets it replayed, the handler run once.
#[tokio::test]
async fn a_kept_answer_is_written_back_soon_after_the_store_is_back() {
    let Some(mut redis) = Redis::start().await else {
        return;
    };
    let store = connect(&redis).await;
    let app = serve(&store, IdempotencyLayer::new(store.clone())).await;
    let key = fresh_key();
    let first = tokio::spawn({
        let (u, k) = (app.url("/gated"), key.clone());
        async move { post(&u, Some(&k), "x").await }
    });
    server_support::wait_until(|| count(&app.runs.gated) == 1).await;
    redis.kill();
    app.gate.add_permits(1);
    let first = first.await.unwrap();
    assert_eq!(first.status, 201);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(redis.spawn());
    redis.wait_ready().await;
    let back = Instant::now();
    let other_store = connect(&redis).await;
    let other = serve(&other_store, IdempotencyLayer::new(other_store.clone())).await;
    tokio::time::sleep_until(back + Duration::from_millis(600)).await;
    let elsewhere = tokio::spawn({
        let (u, k) = (other.url("/gated"), key.clone());
        async move { post(&u, Some(&k), "x").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ran_elsewhere = count(&other.runs.gated);
    other.gate.add_permits(1);
    let elsewhere = elsewhere.await.unwrap();
    assert_eq!(ran_elsewhere, 0, "the handler ran a second time");
    assert!(
        elsewhere.replayed(),
        "{} {}",
        elsewhere.status,
        elsewhere.body
    );
    assert_eq!(elsewhere.body, first.body);
}

/// A store connected through `proxy`, the layer asking it on every request, and the app: one
/// keyed request stored through it first.
async fn through(proxy: &BlackHole) -> (Store, server_support::App) {
    let store: Store = Arc::new(
        RedisStore::connect(&proxy.url())
            .await
            .expect("connect")
            .prefix(PREFIX),
    );
    let layer = IdempotencyLayer::new(store.clone()).store_down_for(Duration::ZERO);
    let app = serve(&store, layer).await;
    assert_eq!(
        post(&app.url("/orders"), Some(&fresh_key()), "x")
            .await
            .status,
        201
    );
    (store, app)
}

/// Keyed requests, 100 ms apart, until one is served (201): how many were refused (503) before,
/// within 8 s.
async fn refused_until_served(url: &str) -> usize {
    let started = Instant::now();
    let mut refused = 0;
    loop {
        let r = post(url, Some(&fresh_key()), "x").await;
        if r.status == 201 {
            return refused;
        }
        assert_eq!(r.status, 503, "{r:?}");
        refused += 1;
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "still 503 after {:?} ({refused} refused)",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Redis host vanishes without a reset (its connections carry nothing, and nothing closes
/// them), and a Redis answers at the same address: within a few seconds keyed requests are
/// served again on a new connection, not answered 503 until the kernel gives up on the socket.
#[tokio::test]
async fn a_redis_gone_without_a_reset_is_reconnected() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let proxy = BlackHole::start(redis.port).await;
    let (_store, app) = through(&proxy).await;
    let url = app.url("/orders");
    // The store's one connection so far; new ones are carried.
    proxy.cut(1);
    let refused = refused_until_served(&url).await;
    assert!(refused > 0, "the cut connection was used first");
}

/// The control: a Redis that only paused (a read its caller gave up on, then nothing for
/// longer than the 2 s the watch waits) keeps its connection: asked a PING before it is
/// replaced, it answers.
#[tokio::test]
async fn a_redis_that_paused_keeps_its_connection() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let proxy = BlackHole::start(redis.port).await;
    let (store, app) = through(&proxy).await;
    let url = app.url("/orders");
    redis.signal("-STOP");
    let given_up = tokio::time::timeout(Duration::from_millis(100), store.get("faults:k")).await;
    assert!(given_up.is_err(), "Redis is frozen");
    redis.signal("-CONT");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(post(&url, Some(&fresh_key()), "x").await.status, 201);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        proxy.made.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the connection was replaced"
    );
}

/// A failover: the address the store connected to moves to a new master, and the old one,
/// demoted (`REPLICAOF`), keeps the store's connection open and answers every write
/// `READONLY`. Within a few seconds keyed requests are served again, on a new connection to
/// the new master, each run once; not answered 503 for as long as the process lives.
#[tokio::test]
async fn a_redis_demoted_to_a_replica_is_left_for_the_new_master() {
    // The replication's copy of the data kept off the disk (no `dump.rdb` left behind).
    let diskless = &[
        "--repl-diskless-sync",
        "yes",
        "--repl-diskless-load",
        "swapdb",
    ];
    let Some(old) = Redis::start_with(diskless).await else {
        return;
    };
    let Some(new) = Redis::start_with(diskless).await else {
        return;
    };
    let proxy = BlackHole::start(old.port).await;
    let store: Store = Arc::new(
        RedisStore::connect(&proxy.url())
            .await
            .expect("connect")
            .prefix(PREFIX),
    );
    // The layer as a service writes it: the store's defaults.
    let app = serve(&store, IdempotencyLayer::new(store.clone())).await;
    let url = app.url("/orders");
    assert_eq!(post(&url, Some(&fresh_key()), "x").await.status, 201);
    // The failover: the old master follows the new one, and the address names the new one.
    let demoted = old
        .run(redis::cmd("REPLICAOF").arg("127.0.0.1").arg(new.port))
        .await;
    assert!(demoted.is_ok(), "{demoted:?}");
    proxy.point_at(new.port);
    let refused = refused_until_served(&url).await;
    assert!(refused > 0, "the demoted server was asked first");
    // Every request that got through ran its handler once; those refused ran nothing.
    assert_eq!(count(&app.runs.orders), 2);
    // What it stores now is on the new master, and replayed from there.
    let key = fresh_key();
    assert_eq!(post(&url, Some(&key), "x").await.status, 201);
    let replay = post(&url, Some(&key), "x").await;
    assert_eq!(
        (replay.status, replay.replayed()),
        (201, true),
        "{replay:?}"
    );
    let record = format!(
        "{PREFIX}{}",
        record_key(&reqwest::Method::POST, "/orders", &key, None)
    );
    assert!(new.get(&record).await.is_some(), "not on the new master");
    assert_eq!(count(&app.runs.orders), 3);
}
