//! The adaptive concurrency limit through real sockets: a dependency that slows down with the
//! requests it holds gets fewer at once once the limit adapts, and more again when it recovers;
//! a limit reached refuses without sending; a named limit is shared by the functions naming it.
//!
//! The server is the loopback fault server with a script that keeps the requests it holds:
//! each request is answered after a delay chosen from how many the server holds when it
//! arrives, itself included (a request counts from its arrival until its answer is due).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use resilience_fault_server::{Action, FaultServer, Script};
use resilience_runtime::{Error, ErrorKind, metrics, resilient};
use tokio::time::Instant;

/// A server holding up to 4 requests answers each in 20 ms; every request more adds 30 ms to
/// the answer of the one arriving (7 held: 110 ms, over the 100 ms the limit calls slow).
/// Recovered, it answers in 20 ms whatever it holds.
struct Dependency {
    recovered: AtomicBool,
    /// When each request held is answered.
    due: Mutex<Vec<Instant>>,
    /// (arrival, requests held then, itself included).
    log: Mutex<Vec<(Instant, usize)>>,
}

impl Dependency {
    fn answer(&self, at: Instant) -> Action {
        let mut due = self.due.lock().unwrap();
        due.retain(|d| *d > at);
        let held = due.len() + 1;
        let ms = if self.recovered.load(Ordering::Relaxed) || held <= 4 {
            20
        } else {
            20 + 30 * (held as u64 - 4)
        };
        due.push(at + Duration::from_millis(ms));
        self.log.lock().unwrap().push((at, held));
        Action::ok().after(Duration::from_millis(ms))
    }

    /// The most and the mean of the requests held at arrivals in `from..to`.
    fn held(&self, from: Instant, to: Instant) -> (usize, f64, usize) {
        let log = self.log.lock().unwrap();
        let seen: Vec<usize> = log
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, n)| *n)
            .collect();
        let max = seen.iter().copied().max().unwrap_or(0);
        let mean = seen.iter().sum::<usize>() as f64 / seen.len().max(1) as f64;
        (max, mean, seen.len())
    }
}

#[resilient(
    timeout = "2s",
    deadline = "5s",
    max_attempts = 1,
    budget = false,
    concurrency_limit(
        name = "adaptive-dependency",
        initial = 16,
        min = 2,
        max = 64,
        latency = "100ms",
        backoff = 0.9,
        max_wait = "2s"
    )
)]
async fn fetch(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

const CALLERS: usize = 32;

/// Each caller calls again as soon as its call ends, until `until`: (answered, refused).
async fn load(c: &reqwest::Client, url: &str, until: Instant) -> (usize, usize) {
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..CALLERS {
        let (c, url) = (c.clone(), url.to_owned());
        callers.spawn(async move {
            let (mut ok, mut refused) = (0, 0);
            while Instant::now() < until {
                match fetch(&c, &url).await {
                    Ok(200) => ok += 1,
                    Ok(s) => panic!("status {s}"),
                    Err(e) => {
                        assert_eq!(e.kind(), ErrorKind::BulkheadFull, "{e}");
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (ok, refused)
        });
    }
    let mut total = (0, 0);
    while let Some(r) = callers.join_next().await {
        let (ok, refused) = r.unwrap();
        total = (total.0 + ok, total.1 + refused);
    }
    total
}

#[tokio::test(start_paused = true)]
async fn a_dependency_that_slows_down_gets_fewer_requests_at_once_then_more_when_it_recovers() {
    let dep = Arc::new(Dependency {
        recovered: AtomicBool::new(false),
        due: Mutex::new(Vec::new()),
        log: Mutex::new(Vec::new()),
    });
    let d = dep.clone();
    let server = FaultServer::start(Script::dynamic(move |seen| d.answer(seen.at))).await;
    let url = server.url("/");
    let c = reqwest::Client::new();
    let name = "adaptive-dependency";

    // Overloaded: 32 callers against a limit starting at 16.
    let t0 = Instant::now();
    let (ok, refused) = load(&c, &url, t0 + Duration::from_secs(6)).await;
    let (first_max, first_mean, _) = dep.held(t0, t0 + Duration::from_millis(500));
    let (late_max, late_mean, late_n) =
        dep.held(t0 + Duration::from_secs(4), t0 + Duration::from_secs(6));
    let slow = metrics::concurrency_limit(name).unwrap();
    println!(
        "overloaded: {ok} calls answered, {refused} refused; held at arrival: first 500 ms max {first_max} mean {first_mean:.1}, last 2 s max {late_max} mean {late_mean:.1} ({late_n} requests); limit {:.2}, {} decreases",
        slow.limit, slow.decreases
    );
    assert_eq!(refused, 0, "a call waits for a slot within max_wait");
    assert!(
        first_max >= 12,
        "at first the limit lets 16 through: {first_max}"
    );
    // Adapted: the server holds at most 8 at once (110 ms at 7, 140 ms at 8), against the 32
    // callers and the 16 the limit started at.
    assert!(late_max <= 8, "held at once once adapted: {late_max}");
    assert!(late_mean <= 7.0, "mean held once adapted: {late_mean}");
    assert!(late_n >= 50, "still serving: {late_n}");
    assert!(slow.limit < 9.0 && slow.limit >= 2.0, "{}", slow.limit);
    assert!(slow.decreases >= 5);

    // Recovered: 20 ms whatever the server holds; the limit grows again.
    dep.recovered.store(true, Ordering::Relaxed);
    let t1 = Instant::now();
    let (ok, refused) = load(&c, &url, t1 + Duration::from_secs(3)).await;
    let (rec_max, rec_mean, rec_n) =
        dep.held(t1 + Duration::from_secs(2), t1 + Duration::from_secs(3));
    let fast = metrics::concurrency_limit(name).unwrap();
    println!(
        "recovered: {ok} calls answered, {refused} refused; held at arrival in the last second: max {rec_max} mean {rec_mean:.1} ({rec_n} requests); limit {:.2}",
        fast.limit
    );
    assert_eq!(refused, 0);
    assert!(fast.limit >= 24.0, "the limit grew back: {}", fast.limit);
    assert!(rec_max >= 24, "more at once again: {rec_max}");
    assert!(rec_mean > 2.0 * late_mean, "{rec_mean} vs {late_mean}");
    assert_eq!(fast.in_flight, 0);
}

#[resilient(timeout = "2s", deadline = "5s", max_attempts = 1, budget = false)]
async fn fetch_unlimited(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// The control: the same callers without the limit keep the server holding every one of them.
#[tokio::test(start_paused = true)]
async fn without_the_limit_the_slow_dependency_holds_every_caller() {
    let dep = Arc::new(Dependency {
        recovered: AtomicBool::new(false),
        due: Mutex::new(Vec::new()),
        log: Mutex::new(Vec::new()),
    });
    let d = dep.clone();
    let server = FaultServer::start(Script::dynamic(move |seen| d.answer(seen.at))).await;
    let url = server.url("/");
    let c = reqwest::Client::new();
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(3);
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..CALLERS {
        let (c, url) = (c.clone(), url.clone());
        callers.spawn(async move {
            while Instant::now() < until {
                assert_eq!(fetch_unlimited(&c, &url).await.unwrap(), 200);
            }
        });
    }
    while let Some(r) = callers.join_next().await {
        r.unwrap();
    }
    let (max, mean, n) = dep.held(t0 + Duration::from_secs(1), until);
    println!("no limit: held at arrival max {max} mean {mean:.1} ({n} requests)");
    assert!(max >= 30, "{max}");
    assert!(mean >= 20.0, "{mean}");
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    concurrency_limit(initial = 1, min = 1, max = 1, latency = "500ms")
)]
async fn one_at_a_time(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

#[tokio::test(start_paused = true)]
async fn a_limit_reached_refuses_at_once_without_sending() {
    let server = FaultServer::start(Script::always(
        Action::ok().after(Duration::from_millis(50)),
    ))
    .await;
    let (c, url) = (reqwest::Client::new(), server.url("/"));
    let t = Instant::now();
    let (a, b) = tokio::join!(one_at_a_time(&c, &url), async {
        tokio::task::yield_now().await;
        (one_at_a_time(&c, &url).await, t.elapsed())
    });
    assert_eq!(a.unwrap(), 200);
    let (e, at) = (b.0.unwrap_err(), b.1);
    assert_eq!(e.kind(), ErrorKind::BulkheadFull);
    assert!(e.is_rejected());
    assert_eq!(e.attempts(), 0);
    assert_eq!(at, Duration::ZERO, "refused at once");
    assert_eq!(server.count(), 1);
    let m = metrics::policy("adaptive_concurrency::one_at_a_time").unwrap();
    assert_eq!(m.rejected_bulkhead, 1);
    let s = metrics::concurrency_limit("adaptive_concurrency::one_at_a_time").unwrap();
    assert_eq!((s.admitted, s.rejected, s.in_flight), (1, 1, 0));
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    concurrency_limit(name = "adaptive-shared", initial = 4, latency = "500ms")
)]
async fn shared_a(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    concurrency_limit(name = "adaptive-shared", initial = 4, latency = "500ms")
)]
async fn shared_b(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

#[tokio::test(start_paused = true)]
async fn a_named_limit_is_shared_by_the_functions_naming_it() {
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let (c, url) = (reqwest::Client::new(), server.url("/"));
    assert_eq!(shared_a(&c, &url).await.unwrap(), 200);
    assert_eq!(shared_b(&c, &url).await.unwrap(), 200);
    let s = metrics::concurrency_limit("adaptive-shared").unwrap();
    assert_eq!(s.admitted, 2);
    assert_eq!(
        metrics::concurrency_limit("adaptive_concurrency::shared_a"),
        None
    );
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    concurrency_limit(latency = "500ms")
)]
async fn overridden(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

#[tokio::test(start_paused = true)]
async fn an_override_is_checked_against_the_latency_threshold() {
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let c = reqwest::Client::new();
    overridden(&c, &server.url("/")).await.unwrap(); // known to the overrides now
    let file = "[functions.\"adaptive_concurrency::overridden\"]\ntimeout = \"400ms\"\n";
    let e = resilience_runtime::overrides::apply_str(file, "incident.toml").unwrap_err();
    assert!(
        e.to_string().contains(
            "concurrency_limit latency (500ms) is not shorter than the attempt timeout (400ms)"
        ),
        "{e}"
    );
    let file = "[functions.\"adaptive_concurrency::overridden\"]\nconcurrency_limit = { latency = \"1s\" }\n";
    let e = resilience_runtime::overrides::apply_str(file, "incident.toml").unwrap_err();
    assert!(
        e.to_string()
            .contains("`concurrency_limit` cannot change at run time"),
        "{e}"
    );
}

#[resilient(
    timeout = "2s",
    deadline = "5s",
    max_attempts = 1,
    budget = false,
    concurrency_limit(name = "throttled", initial = 8, min = 1, max = 8, latency = "200ms")
)]
async fn throttled(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// Fast transient answers lower the limit too (the README's list): a 429 (the dependency
/// asking this client to slow down), a 503, a reset, each answered at once; a fast 404 does
/// not, nor a fast 501 (the same answer to the same request).
#[tokio::test(start_paused = true)]
async fn fast_transient_failures_lower_the_limit_and_fast_refusals_do_not() {
    let decreases = || {
        metrics::concurrency_limit("throttled")
            .map(|l| l.decreases)
            .unwrap_or(0)
    };
    let c = reqwest::Client::new();
    for (action, lowers) in [
        (Action::status(404), false),
        (Action::status(501), false),
        (Action::status(429), true),
        (Action::status(503), true),
        (Action::reset(), true),
    ] {
        let server =
            FaultServer::start(resilience_fault_server::Script::always(action.clone())).await;
        let before = decreases();
        // Apart by more than a round trip: each failure can lower the limit once.
        throttled(&c, &server.url("/items/9")).await.unwrap_err();
        tokio::time::sleep(Duration::from_secs(1)).await;
        throttled(&c, &server.url("/items/9")).await.unwrap_err();
        assert_eq!(decreases() > before, lowers, "{action:?}");
    }
}

#[resilient(
    timeout = "2s",
    deadline = "5s",
    max_attempts = 1,
    budget = false,
    concurrency_limit(
        name = "slow-lookups",
        initial = 8,
        min = 1,
        max = 8,
        latency = "200ms"
    )
)]
async fn lookup(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A dependency that answers 404 in 300 ms (an overloaded lookup of a missing item): its
/// answers are slower than `latency`, so the limit comes down, as after slow successes; a 404
/// once said nothing to the limit.
#[tokio::test(start_paused = true)]
async fn slow_4xx_answers_lower_the_limit() {
    let server = FaultServer::start(resilience_fault_server::Script::always(
        Action::status(404).after(Duration::from_millis(300)),
    ))
    .await;
    let c = reqwest::Client::new();
    for _ in 0..3 {
        let e = lookup(&c, &server.url("/items/9")).await.unwrap_err();
        assert_eq!(e.http_status(), Some(404), "{e}");
    }
    let limit = metrics::concurrency_limit("slow-lookups").expect("used");
    assert!(limit.decreases >= 1, "{limit:?}");
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    concurrency_limit(initial = 8, min = 1, max = 64, latency = "100ms")
)]
async fn behind_callers_deadlines(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A timeout cut to less than a tenth of `timeout` by the caller's time says nothing of the
/// dependency: it leaves the limit where it was; one cut to a tenth or more counts as
/// overload, as the breaker counts it.
#[tokio::test(start_paused = true)]
async fn a_caller_cut_timeout_lowers_the_limit_only_from_a_tenth_of_the_timeout() {
    use resilience_runtime::{Inbound, with_inbound};
    let stalled = FaultServer::start(Script::always(Action::stall())).await;
    let c = reqwest::Client::new();
    let url = stalled.url("/");
    let name = "adaptive_concurrency::behind_callers_deadlines";
    let call = |left: u64| {
        let (c, url) = (c.clone(), url.clone());
        with_inbound(
            Inbound::NONE.time_left(Duration::from_millis(left)),
            async move { behind_callers_deadlines(&c, &url).await },
        )
    };
    for _ in 0..5 {
        call(50).await.unwrap_err();
    }
    let s = metrics::concurrency_limit(name).unwrap();
    assert_eq!(
        (s.limit, s.decreases),
        (8.0, 0),
        "cut to 50 ms of 1 s: {s:?}"
    );
    call(500).await.unwrap_err();
    let s = metrics::concurrency_limit(name).unwrap();
    assert_eq!(s.decreases, 1, "cut to 500 ms of 1 s: {s:?}");
    assert!(s.limit < 8.0, "{s:?}");
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    concurrency_limit(initial = 8, min = 1, max = 64, latency = "500ms")
)]
async fn behind_short_deadlines(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    concurrency_limit(
        name = "own_short_timeouts",
        initial = 8,
        min = 1,
        max = 64,
        latency = "500ms"
    )
)]
async fn with_its_own_short_timeout(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    // A nested call's 200 ms, shorter than the threshold: the dependency's timeout all the same.
    quick_lookup(c, url).await
}

#[resilient(timeout = "200ms", max_attempts = 1, budget = false)]
async fn quick_lookup(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// A caller's deadline that cuts the attempt to 200 ms, past a tenth of `timeout` but short of
/// the 500 ms threshold, says nothing of the dependency's latency: the limit stays. Cut to
/// 600 ms, past the threshold, it counts; so does a nested call's own 200 ms timeout.
#[tokio::test(start_paused = true)]
async fn a_cut_timeout_short_of_the_latency_threshold_leaves_the_limit() {
    use resilience_runtime::{Inbound, with_inbound};
    let stalled = FaultServer::start(Script::always(Action::stall())).await;
    let c = reqwest::Client::new();
    let url = stalled.url("/");
    let name = "adaptive_concurrency::behind_short_deadlines";
    let call = |left: u64| {
        let (c, url) = (c.clone(), url.clone());
        with_inbound(
            Inbound::NONE.time_left(Duration::from_millis(left)),
            async move { behind_short_deadlines(&c, &url).await },
        )
    };
    for _ in 0..3 {
        call(200).await.unwrap_err();
    }
    let s = metrics::concurrency_limit(name).unwrap();
    assert_eq!((s.limit, s.decreases), (8.0, 0), "cut to 200 ms: {s:?}");
    call(600).await.unwrap_err();
    let s = metrics::concurrency_limit(name).unwrap();
    assert_eq!(s.decreases, 1, "cut to 600 ms: {s:?}");
    with_its_own_short_timeout(&c, &url).await.unwrap_err();
    let own = metrics::concurrency_limit("own_short_timeouts").unwrap();
    assert_eq!(own.decreases, 1, "a nested call's own 200 ms: {own:?}");
}

#[resilient(
    timeout = "2s",
    deadline = "5s",
    max_attempts = 1,
    budget = false,
    concurrency_limit(name = "unreached", initial = 2, min = 1, max = 64, latency = "200ms")
)]
async fn unreached(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A host the system's resolver says does not exist (a label longer than DNS allows, refused
/// without a query): every call fails at once, permanent, and reaches nothing, so the limit
/// does not grow on it as on fast answers (it rose towards its `max` while the dependency was
/// gone, for all of them to arrive at once when it came back). A fast 404, answered, does.
#[tokio::test(start_paused = true)]
async fn failures_that_reach_nothing_do_not_raise_the_limit() {
    let limit = || metrics::concurrency_limit("unreached").map_or(2.0, |l| l.limit);
    let c = reqwest::Client::new();
    let gone = format!("http://{}.example/items/9", "x".repeat(64));
    for _ in 0..8 {
        let e = unreached(&c, &gone).await.unwrap_err();
        assert_eq!(e.attempts(), 1, "{e}");
    }
    assert_eq!(limit(), 2.0);
    let server =
        FaultServer::start(resilience_fault_server::Script::always(Action::status(404))).await;
    for _ in 0..4 {
        unreached(&c, &server.url("/items/9")).await.unwrap_err();
    }
    assert!(limit() > 2.0, "{}", limit());
}

#[resilient(
    timeout = "2s",
    deadline = "5s",
    max_attempts = 1,
    budget = false,
    concurrency_limit(name = "adaptive-panicking", initial = 8, latency = "100ms")
)]
async fn waits_then_panics(wait: Duration) -> Result<u16, Error> {
    // Something of its own, slower than the latency threshold, then a bug: no request sent.
    tokio::time::sleep(wait).await;
    panic!("a bug in the body");
}

/// A body that waited on something of its own longer than the latency threshold, then
/// panicked, reached no dependency: the limit is left as it was (the permit's drop took the
/// attempt in flight for an overload and lowered it).
#[tokio::test(start_paused = true)]
async fn a_body_that_panics_after_a_slow_wait_of_its_own_leaves_the_limit() {
    let panicked = tokio::spawn(waits_then_panics(Duration::from_millis(200))).await;
    assert!(panicked.is_err_and(|e| e.is_panic()));
    let limit = metrics::concurrency_limit("adaptive-panicking").unwrap();
    assert_eq!(limit.decreases, 0, "{limit:?}");
    assert_eq!(limit.in_flight, 0, "{limit:?}");
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    concurrency_limit(name = "two_clocks", initial = 8, min = 1, max = 8, latency = "100ms")
)]
async fn under_two_clocks(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A limit outlives the runtime it was first used under: a test's paused clock run an hour
/// ahead there, and the next test's runtime, whose paused clock starts behind it, still lowers
/// it once per round trip. It lowered it once, then never again until its clock passed the
/// other's (the decrease read by one clock, the attempts by another).
#[test]
fn a_limit_first_used_under_a_clock_run_ahead_still_lowers_under_another() {
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    };
    let decreases = || {
        metrics::concurrency_limit("two_clocks")
            .map(|l| l.decreases)
            .unwrap_or(0)
    };
    runtime().block_on(async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let server = FaultServer::start(Script::always(Action::status(503))).await;
        under_two_clocks(&reqwest::Client::new(), &server.url("/"))
            .await
            .unwrap_err();
    });
    assert_eq!(decreases(), 1);
    runtime().block_on(async {
        let server = FaultServer::start(Script::always(Action::status(503))).await;
        let c = reqwest::Client::new();
        for _ in 0..4 {
            under_two_clocks(&c, &server.url("/")).await.unwrap_err();
            // Apart by more than a round trip: each failure lowers the limit once.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    assert_eq!(decreases(), 5);
}

/// A service's error type whose `Classify` takes every failure for permanent (it never wants
/// a retry).
#[derive(Debug)]
struct NeverRetry(u16);

impl std::fmt::Display for NeverRetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "answered {}", self.0)
    }
}

impl std::error::Error for NeverRetry {}

impl From<Error> for NeverRetry {
    fn from(e: Error) -> Self {
        NeverRetry(e.http_status().unwrap_or(0))
    }
}

impl resilience_runtime::Classify for NeverRetry {
    fn class(&self) -> Option<resilience_runtime::Class> {
        Some(resilience_runtime::Class::Permanent)
    }
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    concurrency_limit(name = "never_retry", initial = 2, min = 1, max = 8, latency = "200ms")
)]
async fn never_retried(c: &reqwest::Client, url: &str) -> Result<u16, NeverRetry> {
    let status = c.get(url).send().await.map_err(|_| NeverRetry(0))?.status();
    if status.is_server_error() {
        return Err(NeverRetry(status.as_u16()));
    }
    Ok(status.as_u16())
}

/// Fast 503s the function's own `Classify` takes for permanent are no sign of health: the
/// limit does not grow on them (it grew at each, past its initial 2, as on fast successes).
#[tokio::test(start_paused = true)]
async fn fast_5xx_a_classify_calls_permanent_do_not_raise_the_limit() {
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    let (c, url) = (reqwest::Client::new(), server.url("/"));
    for _ in 0..4 {
        // Two at once: the limit is in use (at least half of it), as growth asks.
        let (a, b) = tokio::join!(never_retried(&c, &url), never_retried(&c, &url));
        assert_eq!((a.unwrap_err().0, b.unwrap_err().0), (503, 503));
    }
    assert_eq!(server.count(), 8);
    let limit = metrics::concurrency_limit("never_retry").unwrap();
    assert!(limit.limit <= 2.0, "{limit:?}");
}

#[resilient(
    timeout = "1s",
    deadline = "5s",
    max_attempts = 3,
    budget = false,
    backoff(kind = "constant", initial = "200ms", max = "200ms", jitter = "none"),
    concurrency_limit(
        name = "held_across_retries",
        initial = 1,
        min = 1,
        max = 1,
        latency = "100ms"
    )
)]
async fn retried_in_its_slot(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A call holds its slot for its whole length, retries and backoff included: another call
/// during the backoff is refused, nothing sent.
#[tokio::test(start_paused = true)]
async fn a_call_holds_its_slot_across_its_retries_and_backoff() {
    let server = FaultServer::start(Script::sequence([
        Action::status(503),
        Action::status(503),
        Action::ok(),
    ]))
    .await;
    let c = reqwest::Client::new();
    let url = server.url("/");
    let (first, during) = tokio::join!(retried_in_its_slot(&c, &url), async {
        // Inside the first backoff.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let refused = retried_in_its_slot(&c, &url).await;
        let limit = metrics::concurrency_limit("held_across_retries").unwrap();
        (refused, limit.in_flight)
    });
    assert_eq!(first.unwrap(), 200);
    let e = during.0.unwrap_err();
    assert_eq!(
        (e.kind(), e.attempts()),
        (ErrorKind::BulkheadFull, 0),
        "{e}"
    );
    assert_eq!(during.1, 1, "the retrying call's slot");
    assert_eq!(server.count(), 3, "the refused call sent nothing");
}

#[resilient(
    timeout = "1s",
    deadline = "1500ms",
    max_attempts = 1,
    budget = false,
    concurrency_limit(
        name = "waited_past_deadline",
        initial = 1,
        min = 1,
        max = 1,
        latency = "500ms",
        max_wait = "1s"
    )
)]
async fn waits_for_a_slot(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// A call whose deadline comes while it waits for a concurrency limit's slot fails
/// `DeadlineExceeded` with 0 attempts, nothing sent (its wait ends with a tenth of `timeout`,
/// or of the time it was handed when less, left for a first attempt), and counts as the
/// limit's refusal.
#[tokio::test(start_paused = true)]
async fn a_deadline_that_comes_while_waiting_for_a_slot_sends_nothing() {
    let server =
        FaultServer::start(Script::always(Action::ok().after(Duration::from_secs(5)))).await;
    let c = reqwest::Client::new();
    let url = server.url("/");
    let refused_before =
        metrics::concurrency_limit("waited_past_deadline").map_or(0, |l| l.rejected);
    let (held, waited) = tokio::join!(waits_for_a_slot(&c, &url), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // 300 ms left, the holder's slot held for 900 ms more: the 1 s wait would pass the
        // deadline's bound.
        let with_a_caller = resilience_runtime::with_inbound(
            resilience_runtime::Inbound::NONE.time_left(Duration::from_millis(300)),
            waits_for_a_slot(&c, &url),
        );
        let started = tokio::time::Instant::now();
        (with_a_caller.await, started.elapsed())
    });
    assert!(held.is_err(), "the holder timed out");
    let (e, waited_for) = (waited.0.unwrap_err(), waited.1);
    assert_eq!(
        (e.kind(), e.attempts()),
        (ErrorKind::DeadlineExceeded, 0),
        "{e}"
    );
    // It waited until a tenth of the time it was handed (shorter than its timeout) was left,
    // no longer.
    assert_eq!(waited_for, Duration::from_millis(270));
    assert_eq!(server.count(), 1, "only the holder's request went out");
    let limit = metrics::concurrency_limit("waited_past_deadline").unwrap();
    assert_eq!(limit.rejected, refused_before + 1);
}
