//! The client-side rate limit through real sockets: a burst then refusals at once, a wait for
//! a permit that counts against the deadline, and one limit shared by two processes through a
//! real Redis, and through a real Redis Cluster, the combined rate measured at the server
//! against the limit (with the control: two local limits let twice as much through).
//!
//! The shared tests need a Redis at `RESILIENCE_REDIS_URL` (default `redis://127.0.0.1:6399/`,
//! `.ci/redis.sh`) and a Redis Cluster at `RESILIENCE_REDIS_CLUSTER_URLS` (default
//! `redis://127.0.0.1:7101/,redis://127.0.0.1:7102/,redis://127.0.0.1:7103/`,
//! `.ci/cluster.sh`). Without them they are skipped, unless `CI` is set: then they fail.

mod support;

use std::time::Duration;

use resilience_fault_server::{Action, FaultServer, Script};
use resilience_runtime::{Error, ErrorKind, metrics, resilient};
use tokio::time::Instant;

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    rate_limit(rate = 10, burst = 3)
)]
async fn refuse_at_once(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    rate_limit = { name = "rl_shared_nested", rate = 3, per = "1h", burst = 3 }
)]
async fn insert_row(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// A caller under the same limit (as `[defaults] rate_limit = "pg"` gives every function)
/// that makes its nested calls in a loop.
#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    method = GET,
    rate_limit = { name = "rl_shared_nested", rate = 3, per = "1h", burst = 3 }
)]
async fn sync_rows(c: &reqwest::Client, url: &str) -> Result<Vec<bool>, Error> {
    let mut done = Vec::new();
    for _ in 0..5 {
        done.push(insert_row(c, url).await.is_ok());
    }
    Ok(done)
}

/// Nested calls under their caller's rate limit take a permit each: three an hour, one the
/// caller's, two for the loop's first two calls; the other three are refused and send
/// nothing. The limit bounds what reaches the dependency, a loop of nested calls included
/// (one permit for the caller covering them all let every call of the loop through).
#[tokio::test(start_paused = true)]
async fn nested_calls_under_their_callers_rate_limit_take_a_permit_each() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let done = sync_rows(&c, &server.url("/")).await.unwrap();
    assert_eq!(done, [true, true, false, false, false]);
    assert_eq!(server.count(), 2);
}

/// One slot, two permits an hour: what each call takes, in the README's layer order (the
/// bulkhead outside the rate limit).
#[resilient(
    timeout = "10s",
    deadline = "20s",
    max_attempts = 1,
    budget = false,
    bulkhead(max_concurrent = 1, max_wait = "0ms"),
    rate_limit(rate = 2, per = "1h", burst = 2)
)]
async fn one_at_a_time(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// "A call refused a slot spends no permit": while one call holds the only slot, others are
/// refused by the bulkhead and leave the hour's second permit for the next call.
#[tokio::test(start_paused = true)]
async fn a_call_refused_a_slot_spends_no_permit() {
    let c = reqwest::Client::new();
    let slow = FaultServer::start(Script::always(Action::ok().after(Duration::from_secs(1)))).await;
    let url = slow.url("/");
    let holder = tokio::spawn({
        let (c, url) = (c.clone(), url.clone());
        async move { one_at_a_time(&c, &url).await }
    });
    assert!(
        slow.wait_for(1).await >= 1,
        "the first request reached the server"
    );
    for _ in 0..3 {
        let e = one_at_a_time(&c, &url).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BulkheadFull, "{e}");
    }
    assert_eq!(holder.await.unwrap().unwrap(), 200);
    // The second permit is still there; the third is an hour away.
    assert_eq!(one_at_a_time(&c, &url).await.unwrap(), 200);
    let e = one_at_a_time(&c, &url).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited, "{e}");
    assert_eq!(slow.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_burst_then_refused_at_once_without_sending() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let url = server.url("/");
    let t = Instant::now();
    let results = futures_join5(
        refuse_at_once(&c, &url),
        refuse_at_once(&c, &url),
        refuse_at_once(&c, &url),
        refuse_at_once(&c, &url),
        refuse_at_once(&c, &url),
    )
    .await;
    assert_eq!(t.elapsed(), Duration::ZERO, "no call waited");
    let refused: Vec<&Error> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(refused.len(), 2, "{results:?}");
    for e in &refused {
        assert_eq!(e.kind(), ErrorKind::RateLimited);
        assert_eq!(e.attempts(), 0);
        assert!(e.is_rejected());
    }
    assert_eq!(server.count(), 3, "the server saw the burst only");
    // 100 ms later one more permit, and only one.
    tokio::time::advance(Duration::from_millis(100)).await;
    assert_eq!(refuse_at_once(&c, &url).await.unwrap(), 200);
    let e = refuse_at_once(&c, &url).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited);
    assert_eq!(server.count(), 4);
    let m = metrics::policy("rate_limit::refuse_at_once").unwrap();
    assert_eq!(m.rejected_rate_limit, 3);
    let s = metrics::rate_limit("rate_limit::refuse_at_once").unwrap();
    assert_eq!((s.admitted, s.rejected), (4, 3));
}

async fn futures_join5<F: std::future::Future>(a: F, b: F, c: F, d: F, e: F) -> Vec<F::Output> {
    let (a, b, c, d, e) = tokio::join!(a, b, c, d, e);
    vec![a, b, c, d, e]
}

#[resilient(
    timeout = "200ms",
    deadline = "250ms",
    max_attempts = 1,
    budget = false,
    rate_limit(rate = 10, burst = 1, max_wait = "200ms")
)]
async fn wait_then_send(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

#[tokio::test(start_paused = true)]
async fn the_wait_for_a_permit_counts_against_the_deadline() {
    let c = reqwest::Client::new();
    // Each answer takes 180 ms: inside the 200 ms attempt timeout.
    let server = FaultServer::start(Script::always(
        Action::ok().after(Duration::from_millis(180)),
    ))
    .await;
    let url = server.url("/");
    let t = Instant::now();
    let (first, second, third) = tokio::join!(
        async { (wait_then_send(&c, &url).await, t.elapsed()) },
        async { (wait_then_send(&c, &url).await, t.elapsed()) },
        async { (wait_then_send(&c, &url).await, t.elapsed()) },
    );
    // The first goes at once and is answered at 180 ms.
    assert_eq!(first.0.unwrap(), 200);
    assert_eq!(first.1, Duration::from_millis(180));
    // The second waits 100 ms for its permit: 150 ms of its 250 ms deadline are left, less
    // than the 180 ms answer; it ends at the deadline, not at its 200 ms attempt timeout.
    let e = second.0.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DeadlineExceeded, "{e}");
    assert_eq!(second.1, Duration::from_millis(250));
    // The third would wait 200 ms and then have 50 ms: within max_wait, so it waits, and the
    // deadline ends it; refused only when the wait itself passes max_wait.
    assert_eq!(third.0.unwrap_err().kind(), ErrorKind::DeadlineExceeded);
    assert_eq!(third.1, Duration::from_millis(250));
    assert_eq!(server.count(), 3);
    let seen = server.requests();
    assert_eq!(seen[1].at - seen[0].at, Duration::from_millis(100));
    assert_eq!(seen[2].at - seen[0].at, Duration::from_millis(200));
}

/// One permit an hour.
#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    rate_limit(rate = 1, per = "1h", burst = 1)
)]
async fn hourly(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// A call handed no time (a caller's `X-Timeout-Ms: 0`) ends `DeadlineExceeded` without taking
/// the hour's one permit: nothing could have been sent with it. The next call, with time, gets it.
#[tokio::test(start_paused = true)]
async fn a_call_with_no_time_left_takes_no_permit() {
    use resilience_runtime::{Inbound, with_inbound};
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::ok())).await;
    for _ in 0..3 {
        let e = with_inbound(
            Inbound::NONE.time_left(Duration::ZERO),
            hourly(&c, &server.url("/")),
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::DeadlineExceeded, "{e}");
    }
    assert_eq!(server.count(), 0);
    // Counted as the same call under a policy without a rate limit (failed, out of time), not
    // as the limit's refusals: it had its permit free (an operator would raise the limit).
    let m = metrics::policy("rate_limit::hourly").unwrap();
    assert_eq!((m.rejected_rate_limit, m.failed_without_retry), (0, 3));
    let s = metrics::rate_limit("rate_limit::hourly").unwrap();
    assert_eq!((s.admitted, s.rejected), (0, 0));
    assert_eq!(hourly(&c, &server.url("/")).await.unwrap(), 200);
    assert_eq!(
        hourly(&c, &server.url("/")).await.unwrap_err().kind(),
        ErrorKind::RateLimited
    );
}

// The shared limit: 40 calls per second, a burst of 4, shared through Redis by every process.
#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    rate_limit(
        name = "rate_limit_test_shared",
        rate = 40,
        burst = 4,
        max_wait = "50ms",
        store = "redis"
    )
)]
async fn shared_limit(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

// The control: the same limit, each process its own.
#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    rate_limit(rate = 40, burst = 4, max_wait = "50ms")
)]
async fn local_limit(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

const CHILD_URL: &str = "RESILIENCE_RATE_LIMIT_CHILD_URL";
/// Set for a child that shares the limit through the cluster at these URLs, not one Redis.
const CHILD_CLUSTER: &str = "RESILIENCE_RATE_LIMIT_CHILD_CLUSTER_URLS";
const CLUSTER_URLS: &str =
    "redis://127.0.0.1:7101/,redis://127.0.0.1:7102/,redis://127.0.0.1:7103/";
/// The limit's key (`rate_limit_test_shared`, in one hash slot).
const SHARED_KEY: &str = "resilience:rate:{rate_limit_test_shared}";
const RUN_FOR: Duration = Duration::from_millis(1500);

/// One instance: four workers calling as fast as the limit lets them for `RUN_FOR`, first
/// through the shared limit, then through the local one. Run by the test below.
#[tokio::test]
#[ignore = "run by two_processes_share_one_limit_through_redis{,_cluster} as child processes"]
async fn child_calls_as_fast_as_the_limit_allows() {
    let Ok(base) = std::env::var(CHILD_URL) else {
        return;
    };
    if let Ok(urls) = std::env::var(CHILD_CLUSTER) {
        // The connection the README gives (`use_redis_cluster` takes one made by hand).
        assert!(
            resilience_runtime::ratelimit::connect_redis_cluster(urls.split(','))
                .await
                .unwrap()
        );
    } else {
        let redis_url = std::env::var("RESILIENCE_REDIS_URL").unwrap();
        let client = redis::Client::open(redis_url.as_str()).unwrap();
        let conn = redis::aio::ConnectionManager::new(client).await.unwrap();
        assert!(resilience_runtime::ratelimit::use_redis(conn));
    }
    let c = reqwest::Client::new();
    for (path, local) in [("/shared", false), ("/local", true)] {
        let url = format!("{base}{path}");
        let until = Instant::now() + RUN_FOR;
        let worker = || async {
            let mut sent = 0u32;
            while Instant::now() < until {
                let r = if local {
                    local_limit(&c, &url).await
                } else {
                    shared_limit(&c, &url).await
                };
                match r {
                    Ok(_) => sent += 1,
                    Err(e) => assert_eq!(e.kind(), ErrorKind::RateLimited, "{e}"),
                }
            }
            sent
        };
        let (a, b, c2, d) = tokio::join!(worker(), worker(), worker(), worker());
        println!("{path}: {}", a + b + c2 + d);
    }
    let s = metrics::rate_limit("rate_limit_test_shared").unwrap();
    assert_eq!(s.local_fallbacks, 0, "every decision was Redis's");
    if std::env::var_os(CHILD_CLUSTER).is_some() {
        limits_of_any_name_are_decided_by_the_cluster().await;
    }
}

/// A limit's two keys share a slot whatever its name: an empty name, or one that starts with
/// `}`, once made no hash tag, its keys landed in two slots, and the cluster refused every
/// decision (CROSSSLOT), each then local.
async fn limits_of_any_name_are_decided_by_the_cluster() {
    use resilience_runtime::ratelimit::{RateLimitSpec, RateLimitStore, RateLimiter};
    for name in ["", "}", "}odd", "{}", "a}b{"] {
        let limiter = RateLimiter::new(
            name,
            RateLimitSpec {
                rate: 1000,
                per: Duration::from_secs(1),
                burst: 10,
                max_wait: Duration::ZERO,
                store: RateLimitStore::Redis,
            },
        );
        let far = Instant::now() + Duration::from_secs(5);
        assert_eq!(limiter.acquire_by(far).await, Ok(()), "{name:?}");
        let s = limiter.snapshot();
        assert_eq!(
            (s.local_fallbacks, s.store_unanswered),
            (0, 0),
            "the limit {name:?} was decided locally"
        );
    }
}

#[tokio::test]
async fn two_processes_share_one_limit_through_redis() {
    let Some(redis_url) = support::redis_url().await else {
        return;
    };
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(SHARED_KEY)
        .query_async(&mut conn)
        .await
        .unwrap();
    two_processes_share_one_limit(("RESILIENCE_REDIS_URL", &redis_url)).await;
}

#[tokio::test]
async fn two_processes_share_one_limit_through_a_redis_cluster() {
    let Some(urls) = cluster_urls().await else {
        return;
    };
    let client = redis::cluster::ClusterClient::new(urls.split(',')).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(SHARED_KEY)
        .query_async(&mut conn)
        .await
        .unwrap();
    two_processes_share_one_limit((CHILD_CLUSTER, &urls)).await;
}

/// Two child processes, each given `env`, call through the shared limit and then through the
/// local one; the server measures both.
async fn two_processes_share_one_limit(env: (&str, &str)) {
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let spawn = || {
        tokio::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "child_calls_as_fast_as_the_limit_allows",
                "--nocapture",
            ])
            .env(CHILD_URL, format!("http://{}", server.addr()))
            .env_remove(CHILD_CLUSTER)
            .env(env.0, env.1)
            .output()
    };
    let (a, b) = tokio::join!(spawn(), spawn());
    for out in [a.unwrap(), b.unwrap()] {
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let seen = server.requests();
    let measure = |path: &str| {
        let at: Vec<Instant> = seen
            .iter()
            .filter(|s| s.path == path)
            .map(|s| s.at)
            .collect();
        let span = *at.iter().max().unwrap() - *at.iter().min().unwrap();
        println!("{path}: {} requests in {span:?}", at.len());
        (at.len() as f64, span.as_secs_f64())
    };
    // The limit allows the burst, then 40 per second, across both processes.
    let (n, span) = measure("/shared");
    // Plus 3 for arrival jitter: the clock is Redis's, the times are the server's.
    let allowed = 4.0 + 40.0 * span + 3.0;
    assert!(
        n <= allowed,
        "{n} requests in {span:.3}s through a shared 40/s limit"
    );
    assert!(
        n >= 0.8 * 40.0 * span,
        "the limit is used, not starved: {n} in {span:.3}s"
    );
    // The control: two local limits let each process have 40 per second.
    let (n, span) = measure("/local");
    assert!(n > 1.5 * 40.0 * span, "two local limits: {n} in {span:.3}s");
}

// One a second, a burst of two, shared through Redis: the limit whose Redis clock goes back.
#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    rate_limit(
        name = "rate_limit_test_clock",
        rate = 1,
        burst = 2,
        max_wait = "50ms",
        store = "redis"
    )
)]
async fn clock_limited(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// Set for the child that finds the limit's state written on a Redis clock an hour ahead.
const CHILD_CLOCK: &str = "RESILIENCE_RATE_LIMIT_CHILD_CLOCK";

/// The limit's state as a Redis whose clock was an hour ahead left it (a permit given a second
/// before the clock went back, as after a failover to a replica an hour behind): the next call
/// is given its permit at once, the state read as if that permit had just been given, and the
/// one after it is refused (the limit holds: a burst of two, one of them taken).
/// A child process: `use_redis` is process-wide, and this binary's other tests need none.
#[tokio::test]
#[ignore = "run by a_redis_clock_that_goes_back_does_not_refuse_every_call as a child process"]
async fn child_finds_the_state_of_a_clock_an_hour_ahead() {
    let Ok(redis_url) = std::env::var(CHILD_CLOCK) else {
        return;
    };
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut conn = redis::aio::ConnectionManager::new(client).await.unwrap();
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    let now = secs * 1_000_000 + micros;
    let hour = 3_600_000_000;
    let at = now + hour - 1_000_000;
    // A permit given at `at`, the limit idle before it: the TAT one interval on.
    let tat = at + 1_000_000;
    for (key, value) in [
        ("resilience:rate:{rate_limit_test_clock}", tat),
        ("resilience:rate:{rate_limit_test_clock}:at", at),
    ] {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("PX")
            .arg(2 * hour / 1000)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    assert!(resilience_runtime::ratelimit::use_redis(conn));
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let c = reqwest::Client::new();
    let url = server.url("/");
    let first = clock_limited(&c, &url).await;
    assert_eq!(first.map_err(|e| e.to_string()), Ok(200));
    let second = clock_limited(&c, &url).await.unwrap_err();
    assert_eq!(second.kind(), ErrorKind::RateLimited, "{second}");
    assert_eq!(server.requests().len(), 1);
    let s = metrics::rate_limit("rate_limit_test_clock").unwrap();
    assert_eq!(s.local_fallbacks, 0, "every decision was Redis's");
}

#[tokio::test]
async fn a_redis_clock_that_goes_back_does_not_refuse_every_call() {
    let Some(redis_url) = support::redis_url().await else {
        return;
    };
    run_child(
        "child_finds_the_state_of_a_clock_an_hour_ahead",
        CHILD_CLOCK,
        &redis_url,
    )
    .await;
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    max_attempts = 1,
    budget = false,
    rate_limit(
        name = "rate_limit_test_given_back",
        rate = 1,
        per = "2s",
        burst = 1,
        max_wait = "5s",
        store = "redis"
    )
)]
async fn patient_through_redis(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// Set for the child that gives permits Redis reserved back.
const CHILD_GIVEN_BACK: &str = "RESILIENCE_RATE_LIMIT_CHILD_GIVEN_BACK";

/// A permit Redis reserved is given back there by a caller that stops waiting for it (and
/// no later call reserved one meanwhile): twenty callers giving up after 20 ms each leave the
/// next call its wait for the one permit in two seconds (1.5 s), where their permits, kept,
/// would have pushed it 40 s back (refused, past `max_wait`). On the real clock: Redis's.
/// A child process: `use_redis` is process-wide, and this binary's other tests need none.
#[tokio::test]
#[ignore = "run by a_permit_redis_reserved_is_given_back_by_a_caller_that_gives_up as a child process"]
async fn child_gives_permits_redis_reserved_back() {
    let Ok(redis_url) = std::env::var(CHILD_GIVEN_BACK) else {
        return;
    };
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut conn = redis::aio::ConnectionManager::new(client).await.unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg("resilience:rate:{rate_limit_test_given_back}")
        .arg("resilience:rate:{rate_limit_test_given_back}:at")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(resilience_runtime::ratelimit::use_redis(conn));
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let c = reqwest::Client::new();
    let url = server.url("/");
    assert_eq!(patient_through_redis(&c, &url).await.unwrap(), 200);
    for _ in 0..20 {
        let gave_up =
            tokio::time::timeout(Duration::from_millis(20), patient_through_redis(&c, &url)).await;
        assert!(gave_up.is_err(), "waited 20 ms for its permit");
        // Its permit goes back from a task of its own: before the next call reserves.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t = Instant::now();
    let next = patient_through_redis(&c, &url).await;
    assert_eq!(next.map_err(|e| e.to_string()), Ok(200));
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(server.count(), 2);
    let s = metrics::rate_limit("rate_limit_test_given_back").unwrap();
    assert_eq!(s.local_fallbacks, 0, "every decision was Redis's");
}

#[tokio::test]
async fn a_permit_redis_reserved_is_given_back_by_a_caller_that_gives_up() {
    let Some(redis_url) = support::redis_url().await else {
        return;
    };
    run_child(
        "child_gives_permits_redis_reserved_back",
        CHILD_GIVEN_BACK,
        &redis_url,
    )
    .await;
}

/// Runs the ignored test `child` of this binary in a process of its own (`use_redis` is
/// process-wide), with `env` set to the Redis URL, and asserts it passed.
async fn run_child(child: &str, env: &str, redis_url: &str) {
    let out = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", child, "--nocapture"])
        .env(env, redis_url)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The cluster's node URLs, comma-separated, if it answers PING.
async fn cluster_urls() -> Option<String> {
    let urls =
        std::env::var("RESILIENCE_REDIS_CLUSTER_URLS").unwrap_or_else(|_| CLUSTER_URLS.to_owned());
    let ping = async {
        let client = redis::cluster::ClusterClient::new(urls.split(','))?;
        let mut conn = client.get_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(Duration::from_secs(3), ping).await {
        Ok(Ok(_)) => Some(urls),
        _ if std::env::var_os("CI").is_some() => {
            panic!(
                "CI is set but the Redis Cluster at {urls} is unreachable; start it with .ci/cluster.sh"
            )
        }
        _ => {
            // Straight to stderr: the test harness captures `eprintln!`, and a skip must be
            // seen.
            let _ = std::io::Write::write_fmt(
                &mut std::io::stderr(),
                format_args!(
                    "skipping: the Redis Cluster at {urls} is unreachable; start it with .ci/cluster.sh\n"
                ),
            );
            None
        }
    }
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    max_attempts = 1,
    budget = false,
    rate_limit(rate = 10, burst = 1, max_wait = "5s")
)]
async fn patient(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// The same limit shared through Redis, in a process that has none (`use_redis` never
/// called): each instance holds to it locally, as while Redis is down or slow.
#[resilient(
    timeout = "1s",
    deadline = "10s",
    max_attempts = 1,
    budget = false,
    rate_limit(
        name = "rate_limit_test_patient_shared",
        rate = 10,
        burst = 1,
        max_wait = "5s",
        store = "redis"
    )
)]
async fn patient_shared(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// Callers that give up while they wait for a permit (a timeout of their own, shorter than the
/// limit's `max_wait`) give it back: 40 such callers do not make the next call wait 4 s for
/// permits nothing used.
macro_rules! gives_permits_back {
    ($f:ident, $name:expr) => {{
        let server = FaultServer::start(Script::always(Action::ok())).await;
        let c = reqwest::Client::new();
        let url = server.url("/");
        assert_eq!($f(&c, &url).await.unwrap(), 200);
        for _ in 0..40 {
            let gave_up = tokio::time::timeout(Duration::from_millis(50), $f(&c, &url)).await;
            assert!(gave_up.is_err(), "waited 50 ms for its permit");
        }
        let t = Instant::now();
        assert_eq!($f(&c, &url).await.unwrap(), 200);
        assert!(
            t.elapsed() <= Duration::from_millis(100),
            "{}: waited {:?} for permits no call used",
            stringify!($f),
            t.elapsed()
        );
        assert_eq!(server.count(), 2);
        // The permits counted as given are those given: the first call's at once, and the
        // waits that ended as their callers gave up (the same instant), but none of those
        // given back.
        let s = metrics::rate_limit($name).unwrap();
        assert!(s.admitted + s.waited < 40, "{s:?}");
    }};
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_gives_up_while_it_waits_gives_its_permit_back() {
    gives_permits_back!(patient, "rate_limit::patient");
}

/// So does one that waits for a permit of a shared limit's local stand-in.
#[tokio::test(start_paused = true)]
async fn a_caller_that_gives_up_a_local_permit_of_a_shared_limit_gives_it_back() {
    gives_permits_back!(patient_shared, "rate_limit_test_patient_shared");
}

/// What the fallback sees: the slots of `rate_limit::slot_then_permit`'s bulkhead in use.
async fn slots_in_use(_c: &reqwest::Client, _url: &str) -> Result<u16, Error> {
    let b = metrics::bulkhead("rate_limit::slot_then_permit").expect("registered by a call");
    Ok(u16::try_from(b.in_flight).unwrap() + 1000)
}

#[resilient(
    timeout = "10s",
    deadline = "20s",
    max_attempts = 1,
    budget = false,
    bulkhead(max_concurrent = 1, max_wait = "0ms"),
    rate_limit(rate = 1, per = "1h", burst = 1),
    fallback = slots_in_use,
    fallback_on = [rate_limited],
)]
async fn slot_then_permit(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// A call that took its slot and was then refused a permit gives the slot back at once: its
/// fallback (and the next caller) finds it free, not held until the call returns.
#[tokio::test(start_paused = true)]
async fn a_call_refused_a_permit_gives_its_slot_back_before_its_fallback() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let url = server.url("/");
    assert_eq!(slot_then_permit(&c, &url).await.unwrap(), 200);
    // The hour's only permit is spent: refused, and the fallback sees no slot in use.
    assert_eq!(slot_then_permit(&c, &url).await.unwrap(), 1000);
    assert_eq!(server.count(), 1);
}

/// Two permits an hour; three attempts with no wait between them.
#[resilient(
    timeout = "1s",
    deadline = "10s",
    max_attempts = 3,
    backoff(initial = "0ms", max = "0ms", jitter = none),
    budget = false,
    rate_limit(rate = 2, per = "1h", burst = 2)
)]
async fn retried_under_a_limit(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// "A call takes one permit, before its first attempt: its retries take none": a call retried
/// twice spends one of the hour's two permits, so the next call still gets the other.
#[tokio::test(start_paused = true)]
async fn a_calls_retries_take_no_permit() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(vec![
        Action::status(503),
        Action::status(503),
        Action::ok(),
        Action::ok(),
    ])
    .await;
    let url = server.url("/");
    assert_eq!(retried_under_a_limit(&c, &url).await.unwrap(), 200);
    assert_eq!(server.count(), 3, "three attempts, one permit");
    assert_eq!(retried_under_a_limit(&c, &url).await.unwrap(), 200);
    let e = retried_under_a_limit(&c, &url).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited, "{e}");
    assert_eq!(server.count(), 4);
    let s = metrics::rate_limit("rate_limit::retried_under_a_limit").unwrap();
    assert_eq!((s.admitted, s.rejected), (2, 1));
}

/// Two permits an hour; a hedge after 100 ms.
#[resilient(
    timeout = "2s",
    deadline = "5s",
    max_attempts = 1,
    budget = false,
    hedge(delay = "100ms"),
    rate_limit(rate = 2, per = "1h", burst = 2)
)]
async fn hedged_under_a_limit(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// Nor does a hedge: the stalled request overtaken by its hedge is one call, one permit.
#[tokio::test(start_paused = true)]
async fn a_calls_hedge_takes_no_permit() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::sequence([
        Action::stall(),
        Action::ok(),
        Action::ok(),
    ]))
    .await;
    let url = server.url("/");
    assert_eq!(hedged_under_a_limit(&c, &url).await.unwrap(), 200);
    assert_eq!(server.count(), 2, "the attempt and its hedge");
    assert_eq!(hedged_under_a_limit(&c, &url).await.unwrap(), 200);
    let e = hedged_under_a_limit(&c, &url).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited, "{e}");
    assert_eq!(server.count(), 3);
}

#[resilient(
    timeout = "1s",
    deadline = "1s",
    max_attempts = 1,
    budget = false,
    rate_limit(rate = 1, per = "1s", burst = 1, max_wait = "990ms")
)]
async fn one_a_second_waiting(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// A wait for a permit that would leave the first attempt less than a tenth of its timeout is
/// refused at once: the request would be sent only to time out (`X-Timeout-Ms: 15`), and a
/// keyed POST's outcome then left unknown. Nothing is sent, no permit spent.
#[tokio::test(start_paused = true)]
async fn a_wait_that_would_leave_no_time_to_send_is_refused_at_once() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::ok())).await;
    assert_eq!(
        one_a_second_waiting(&c, &server.url("/")).await.unwrap(),
        200
    );
    tokio::time::sleep(Duration::from_millis(15)).await;
    let t = Instant::now();
    let e = one_a_second_waiting(&c, &server.url("/"))
        .await
        .unwrap_err();
    assert_eq!((e.attempts(), server.count()), (0, 1), "{e}");
    assert_eq!(t.elapsed(), Duration::ZERO, "refused at once: {e}");
    assert_eq!(e.kind(), ErrorKind::DeadlineExceeded, "{e}");
    // No permit spent: the next one is there when the first call's second is up (a permit
    // spent by the refusal would have the next call wait until the second after).
    tokio::time::sleep(Duration::from_millis(985)).await;
    let t = Instant::now();
    assert_eq!(
        one_a_second_waiting(&c, &server.url("/")).await.unwrap(),
        200
    );
    assert_eq!(t.elapsed(), Duration::ZERO);
}
