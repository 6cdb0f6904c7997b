//! What an operator does in an incident, without a rebuild: lengthen a timeout, open a breaker,
//! undo both; and an override that would break a compiled rule is refused with its place in
//! the file.

use std::time::Duration;

mod support;

use resilience_fault_server::{Action, FaultServer, Script};
use resilience_runtime::{Error, ErrorKind, breakers, overrides, resilient};
use tokio::time::Instant;

#[resilient(timeout = "1s", deadline = "20s", max_attempts = 1, budget = false)]
async fn lookup(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

#[tokio::test(start_paused = true)]
async fn a_timeout_lengthened_at_run_time_and_put_back() {
    let c = reqwest::Client::new();
    // The dependency answers after 2 s: the compiled 1 s timeout gives up.
    let server =
        FaultServer::start(Script::always(Action::ok().after(Duration::from_secs(2)))).await;
    let e = lookup(&c, &server.url("/")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AttemptTimeout);

    let changes = overrides::apply_str(
        "[functions.\"runbook::lookup\"]\ntimeout = \"3s\"\ndeadline = \"30s\"\n",
        "incident.toml",
    )
    .unwrap();
    let mine: Vec<_> = changes
        .iter()
        .filter(|c| c.function == "runbook::lookup")
        .map(|c| (c.setting, c.old.as_str(), c.new.as_str()))
        .collect();
    assert_eq!(mine, [("timeout", "1s", "3s"), ("deadline", "20s", "30s")]);
    assert!(overrides::active());
    let started = Instant::now();
    assert_eq!(lookup(&c, &server.url("/")).await.unwrap(), 200);
    assert!(started.elapsed() >= Duration::from_secs(2));

    // A second file that keeps the deadline and leaves the timeout out: told against the
    // policy in force, the timeout goes back, the deadline does not change; the same file
    // again changes nothing.
    let mine = |changes: Vec<overrides::Change>| -> Vec<(&'static str, String, String)> {
        changes
            .into_iter()
            .filter(|c| c.function == "runbook::lookup")
            .map(|c| (c.setting, c.old, c.new))
            .collect()
    };
    let second = "[functions.\"runbook::lookup\"]\ndeadline = \"30s\"\n";
    let changes = overrides::apply_str(second, "incident.toml").unwrap();
    assert_eq!(
        mine(changes),
        [("timeout", "3s".to_owned(), "1s".to_owned())]
    );
    let again = overrides::apply_str(second, "incident.toml").unwrap();
    assert_eq!(mine(again), []);

    // Undo: the compiled policy again.
    let undone = overrides::apply_str("", "incident.toml").unwrap();
    assert_eq!(
        mine(undone),
        [("deadline", "30s".to_owned(), "20s".to_owned())]
    );
    let e = lookup(&c, &server.url("/")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AttemptTimeout);
    // The emptied file leaves nothing in place: the hot path is back to its one load.
    assert!(!overrides::active());
}

#[resilient(timeout = "1s", deadline = "20s", max_attempts = 1, budget = false)]
async fn charge_once(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.post(url)
        .body("amount=1")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[tokio::test(start_paused = true)]
async fn an_override_that_would_resend_an_unkeyed_post_is_refused() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    charge_once(&c, &server.url("/")).await.unwrap_err(); // known to the overrides now
    let file = "# incident 42\n[functions.\"runbook::charge_once\"]\nmax_attempts = 3\n";
    let e = overrides::apply_str(file, "incident.toml").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("incident.toml:3:16: runbook::charge_once (POST): this POST could be retried after it may have reached the server, without an idempotency key"),
        "{msg}"
    );
    assert!(msg.contains("`idempotency_key = auto`"), "the fixes: {msg}");
    // The compiled policy stays: one request, not three.
    server.clear();
    charge_once(&c, &server.url("/")).await.unwrap_err();
    assert_eq!(server.count(), 1);
}

/// Keyed, its method chosen at run time (neither declared nor inferred): the compiler lets it
/// retry only what was never sent, and so does an override.
#[resilient(idempotency_key = auto, retry_on = [connect], timeout = "1s", deadline = "20s", budget = false)]
async fn any_keyed(c: &reqwest::Client, m: reqwest::Method, url: &str) -> Result<u16, Error> {
    Ok(c.request(m, url).send().await?.status().as_u16())
}

#[tokio::test(start_paused = true)]
async fn an_override_retrying_a_function_of_unknown_method_after_sending_is_refused() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::ok())).await;
    any_keyed(&c, reqwest::Method::PUT, &server.url("/"))
        .await
        .unwrap(); // known to the overrides now
    let file = "[functions.\"runbook::any_keyed\"]\nretry_on = [\"connect\", \"timeout\"]\n";
    let e = overrides::apply_str(file, "incident.toml").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(
            "runbook::any_keyed (OTHER): cannot tell which HTTP method this function sends"
        ),
        "{msg}"
    );
    assert!(msg.contains("declare the least safe method"), "{msg}");
}

/// Built without retries: the code generated for it runs the body once, and the body may move
/// its arguments (here the request it was handed).
#[resilient(method = GET, timeout = "1s", deadline = "20s", max_attempts = 1, budget = false)]
async fn fetch_once(c: &reqwest::Client, request: reqwest::Request) -> Result<u16, Error> {
    Ok(c.execute(request)
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[tokio::test(start_paused = true)]
async fn an_override_cannot_add_retries_to_a_function_built_without_them() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    let request = || c.get(server.url("/")).build().unwrap();
    fetch_once(&c, request()).await.unwrap_err(); // known to the overrides now
    let file = "[functions.\"runbook::fetch_once\"]\nmax_attempts = 3\n";
    let e = overrides::apply_str(file, "incident.toml").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("incident.toml:2:16: runbook::fetch_once (GET): max_attempts = 3, but this function was built with max_attempts = 1"),
        "{msg}"
    );
    // Nothing applied: one request, and the error says one attempt ran.
    server.clear();
    let e = fetch_once(&c, request()).await.unwrap_err();
    assert_eq!(server.count(), 1);
    assert_eq!(e.attempts(), 1, "{e}");
}

/// Its client connects within 100 ms (`[clients.fast]`), checked against the 1 s timeout at
/// compile time.
#[resilient(
    config = "tests/policies/precedence.toml",
    client = "fast",
    method = GET,
    max_attempts = 1
)]
async fn via_fast_client(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

#[tokio::test(start_paused = true)]
async fn an_override_keeps_the_timeout_above_the_clients_connect_timeout() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::ok())).await;
    assert_eq!(via_fast_client(&c, &server.url("/")).await.unwrap(), 200);
    // A timeout no longer than the connect timeout: a connect failure, certainly never sent,
    // would end the attempt as a timeout after sending.
    let file = "[functions.\"runbook::via_fast_client\"]\ntimeout = \"100ms\"\n";
    let e = overrides::apply_str(file, "incident.toml").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("incident.toml:2:11: runbook::via_fast_client (GET): connect_timeout (100ms) is not shorter than the attempt timeout (100ms)"),
        "{msg}"
    );
}

#[resilient(method = GET, timeout = "1s", deadline = "20s", max_attempts = 1, budget = false, hedge(delay = "300ms"))]
async fn hedged_lookup(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// An override that takes the timeout below the hedge's delay (the attempt would end before
/// its hedge could start) is refused, as the build refuses it.
#[tokio::test(start_paused = true)]
async fn an_override_keeps_the_timeout_above_the_hedges_delay() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::ok())).await;
    assert_eq!(hedged_lookup(&c, &server.url("/")).await.unwrap(), 200);
    let file = "[functions.\"runbook::hedged_lookup\"]\ntimeout = \"200ms\"\n";
    let e = overrides::apply_str(file, "incident.toml").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("incident.toml:2:11: runbook::hedged_lookup (GET): hedge delay (300ms) is not shorter than the attempt timeout (200ms)"),
        "{msg}"
    );
}

#[tokio::test(start_paused = true)]
async fn bad_files_are_refused_with_their_place() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::ok())).await;
    lookup(&c, &server.url("/")).await.unwrap();
    let cases = [
        (
            "[functions.\"runbook::lookup\"]\ntimeout = \"30s\"\n",
            "incident.toml:2:11: runbook::lookup (GET): timeout (30s) is longer than the deadline (20s)",
        ),
        // `lookup` was built with one attempt: more for every function is refused whole.
        (
            "[defaults]\nmax_attempts = 3\n",
            "incident.toml:2:16: runbook::lookup (GET): max_attempts = 3, but this function was built with max_attempts = 1",
        ),
        (
            "[functions.\"runbook::lookup\"]\nmethod = \"GET\"\n",
            "incident.toml:2:1: `method` cannot change at run time",
        ),
        (
            "[defaults]\ntimout = \"3s\"\n",
            "incident.toml:2:1: unknown key `timout` in [defaults]",
        ),
        (
            "[functions.\"runbook::lookup\"]\ntimeout = \"3 parsecs\"\n",
            "incident.toml:2:11: `parsecs` is not a duration unit",
        ),
        ("[defaults\n", "incident.toml:1:"),
        (
            "[breakers.pg]\nwindow = 10\n",
            "incident.toml:1:2: [breakers] cannot change at run time",
        ),
        (
            "[concurrency_limits.pg]\nmax = 10\n",
            "incident.toml:1:2: [concurrency_limits] cannot change at run time",
        ),
        (
            "[functions.\"runbook::lookup\"]\nconcurrency_limit = { latency = \"1s\" }\n",
            "incident.toml:2:1: `concurrency_limit` cannot change at run time",
        ),
        // Absurd values together: refused, and the refusal's own arithmetic does not overflow.
        (
            "[functions.\"runbook::lookup\"]\ntimeout = \"2000000h\"\nmax_attempts = 4000000000\n",
            "incident.toml:3:16: max_attempts = 4000000000 is outside 1..=10",
        ),
        // Past `u32`: refused as written, not cut down to 4294967295.
        (
            "[functions.\"runbook::lookup\"]\ntimeout = \"2000000h\"\nmax_attempts = 99999999999\n",
            "incident.toml:3:16: max_attempts = 99999999999 is outside 1..=10",
        ),
        // What no function may take, for a function not called yet (so not known): refused
        // as the file is read, not accepted to be refused function by function later.
        (
            "[functions.\"runbook::not_called_yet\"]\nmax_attempts = 0\n",
            "incident.toml:2:16: max_attempts = 0 is outside 1..=10",
        ),
        (
            "[functions.\"runbook::not_called_yet\"]\ntimeout = \"0s\"\n",
            "incident.toml:2:11: timeout",
        ),
        (
            "[defaults]\ndeadline = \"0ms\"\n",
            "incident.toml:2:12: deadline",
        ),
        (
            "[functions.\"runbook::not_called_yet\"]\nretry_on = [\"connect\", 404]\n",
            "incident.toml:2:24: status 404 is permanent",
        ),
        // Checked as written, not once rounded to thousandths (1.000).
        (
            "[functions.\"runbook::not_called_yet\"]\nbackoff = { multiplier = 0.9996 }\n",
            "incident.toml:2:26: backoff multiplier 0.9996 is outside 1..=100",
        ),
        (
            "[functions.\"runbook::not_called_yet\"]\nbackoff = { multiplier = -3.0 }\n",
            "backoff multiplier -3 is outside 1..=100",
        ),
    ];
    for (file, want) in cases {
        let e = overrides::apply_str(file, "incident.toml").unwrap_err();
        assert!(e.to_string().contains(want), "{file:?}:\n{e}");
    }
    // Nothing of them applied.
    let started = Instant::now();
    lookup(&c, &server.url("/")).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[resilient(method = GET, timeout = "1s", deadline = "20s", max_attempts = 3, budget = false)]
async fn lookup_retrying(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[resilient(method = GET, timeout = "1s", deadline = "20s", max_attempts = 1, budget = false, hedge(delay = "300ms", max = 2))]
async fn lookup_hedged(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

#[resilient(method = GET, timeout = "1s", deadline = "20s", max_attempts = 1, budget = false, rate_limit(rate = 100, max_wait = "5s"))]
async fn lookup_limited(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

#[resilient(method = GET, timeout = "1s", deadline = "20s", max_attempts = 1, budget = false, concurrency_limit(name = "runbook-adaptive", latency = "100ms", max_wait = "5s"))]
async fn lookup_adaptive(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// The rules between a setting an override changes and one compiled in (a backoff and the
/// retries, a hedge, a rate or concurrency limit's wait, each against a deadline written in
/// the file): the file is refused with the setting's place, as `resilience check
/// --overrides` refuses it.
#[tokio::test(start_paused = true)]
async fn an_override_breaking_a_rule_against_compiled_settings_is_refused() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let url = server.url("/");
    // Known to the overrides once called.
    lookup_retrying(&c, &url).await.unwrap();
    lookup_hedged(&c, &url).await.unwrap();
    lookup_limited(&c, &url).await.unwrap();
    lookup_adaptive(&c, &url).await.unwrap();
    let cases = [
        (
            "[functions.\"runbook::lookup_retrying\"]\ndeadline = \"1s\"\nbackoff = { kind = \"constant\", initial = \"1s\", jitter = \"none\" }\n",
            "incident.toml:3:42: runbook::lookup_retrying (GET): the backoff waits at least 1s before a retry, not less than the deadline (1s)",
        ),
        (
            "[functions.\"runbook::lookup_retrying\"]\nbackoff = { initial = \"3s\", max = \"1s\" }\n",
            "incident.toml:2:23: runbook::lookup_retrying (GET): backoff initial (3s) is longer than its max (1s)",
        ),
        (
            "[functions.\"runbook::lookup_hedged\"]\ndeadline = \"500ms\"\ntimeout = \"500ms\"\n",
            "incident.toml:2:12: runbook::lookup_hedged (GET): hedge",
        ),
        (
            "[functions.\"runbook::lookup_limited\"]\ndeadline = \"5s\"\n",
            "incident.toml:2:12: runbook::lookup_limited (GET): rate_limit max_wait (5s) is not shorter than the deadline (5s)",
        ),
        (
            "[functions.\"runbook::lookup_adaptive\"]\ndeadline = \"4s\"\n",
            "incident.toml:2:12: runbook::lookup_adaptive (GET): concurrency_limit max_wait (5s) is not shorter than the deadline (4s)",
        ),
    ];
    for (file, want) in cases {
        let e = overrides::apply_str(file, "incident.toml").unwrap_err();
        assert!(e.to_string().contains(want), "{file:?}:\n{e}");
    }
    // Nothing of them applied: three attempts of a failing lookup, within the compiled policy.
    let failing = FaultServer::start(Script::always(Action::status(503))).await;
    let e = lookup_retrying(&c, &failing.url("/")).await.unwrap_err();
    assert_eq!(e.attempts(), 3, "{e}");
}

#[resilient(
    timeout = "1s",
    deadline = "20s",
    max_attempts = 1,
    budget = false,
    breaker(
        name = "runbook-pg",
        failure_rate = 0.5,
        min_calls = 2,
        window = 2,
        open_for = "1m",
        half_open_calls = 1
    )
)]
async fn pay(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[tokio::test(start_paused = true)]
async fn a_breaker_opened_closed_and_reset_by_hand() {
    let c = reqwest::Client::new();
    let healthy = FaultServer::start(Script::always(Action::ok())).await;
    assert!(
        breakers::state("runbook-pg").is_err(),
        "unknown before first use"
    );
    pay(&c, &healthy.url("/")).await.unwrap();

    let s = breakers::force_open("runbook-pg").unwrap();
    assert_eq!(s.state, breakers::BreakerState::Open);
    assert_eq!(s.forced, Some(breakers::BreakerState::Open));
    healthy.clear();
    for _ in 0..3 {
        let e = pay(&c, &healthy.url("/")).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CircuitOpen);
    }
    // Held open past open_for too.
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(
        pay(&c, &healthy.url("/")).await.unwrap_err().kind(),
        ErrorKind::CircuitOpen
    );
    assert_eq!(healthy.count(), 0, "nothing sent while held open");

    // Held closed: failures do not open it.
    let sick = FaultServer::start(Script::always(Action::status(503))).await;
    breakers::force_closed("runbook-pg").unwrap();
    for _ in 0..5 {
        let e = pay(&c, &sick.url("/")).await.unwrap_err();
        assert_eq!(e.http_status(), Some(503));
    }
    assert_eq!(sick.count(), 5);

    // Reset: the breaker works by itself again.
    let s = breakers::reset("runbook-pg").unwrap();
    assert_eq!((s.state, s.forced), (breakers::BreakerState::Closed, None));
    for _ in 0..2 {
        pay(&c, &sick.url("/")).await.unwrap_err();
    }
    assert_eq!(
        pay(&c, &sick.url("/")).await.unwrap_err().kind(),
        ErrorKind::CircuitOpen
    );
    let unknown = breakers::force_open("runbook-nope").unwrap_err();
    assert!(unknown.to_string().contains("runbook-pg"), "{unknown}");
}

/// Run as a child process with `RESILIENCE_OVERRIDES` set: the file applies from the first call.
#[tokio::test(start_paused = true)]
#[ignore = "run by overrides_from_the_environment_apply_at_start_up in a child process"]
async fn child_with_overrides_from_the_environment() {
    // Asked before the first call (an admin endpoint's health check), the environment's file
    // is read and in force.
    assert_eq!(
        overrides::active(),
        std::env::var_os(overrides::ENV).is_some()
    );
    let c = reqwest::Client::new();
    let server =
        FaultServer::start(Script::always(Action::ok().after(Duration::from_secs(2)))).await;
    // Compiled: 1 s. The file in the environment says 3 s.
    assert_eq!(lookup(&c, &server.url("/")).await.unwrap(), 200);
}

/// Run as a child process with `RESILIENCE_OVERRIDES` set but empty (what a container
/// template leaves for a variable it was given no value for): as unset, not a file named "".
/// The first call finds nothing refused; a file applied by hand is removed by `reload()`.
#[tokio::test(start_paused = true)]
#[ignore = "run by an_empty_variable_is_no_file in a child process"]
async fn child_with_an_empty_variable() {
    assert_eq!(
        std::env::var_os(overrides::ENV).as_deref(),
        Some("".as_ref())
    );
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::ok())).await;
    assert_eq!(lookup(&c, &server.url("/")).await.unwrap(), 200);
    assert!(!overrides::active());
    assert!(
        overrides::last_refusal().is_none(),
        "{:?}",
        overrides::last_refusal()
    );
    overrides::apply_str(
        "[functions.\"runbook::lookup\"]\ntimeout = \"3s\"\n",
        "by-hand.toml",
    )
    .unwrap();
    assert!(overrides::active());
    overrides::reload().expect("as unset: every override removed");
    assert!(!overrides::active());
}

#[test]
fn an_empty_variable_is_no_file() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_with_an_empty_variable"])
        .env(overrides::ENV, "")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// An override file with `text` in a directory of its own (`tag` and the process id).
fn override_file(tag: &str, text: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("resilience-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("overrides.toml");
    std::fs::write(&file, text).unwrap();
    (dir, file)
}

/// Runs the ignored test `name` of this binary in a child process, with `RESILIENCE_OVERRIDES`
/// naming `file` (or unset).
fn run_child(name: &str, file: Option<&std::path::Path>) -> std::process::Output {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--ignored", "--exact", name]);
    match file {
        Some(f) => cmd.env(overrides::ENV, f),
        None => cmd.env_remove(overrides::ENV),
    };
    cmd.output().unwrap()
}

#[test]
fn overrides_from_the_environment_apply_at_start_up() {
    let (dir, file) = override_file(
        "runbook",
        "[functions.\"runbook::lookup\"]\ntimeout = \"3s\"\ndeadline = \"30s\"\n",
    );
    let run = |with_file: bool| {
        run_child(
            "child_with_overrides_from_the_environment",
            with_file.then_some(file.as_path()),
        )
    };
    let with = run(true);
    assert!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stdout)
    );
    let without = run(false);
    assert!(!without.status.success(), "the control: 1 s is too short");
    std::fs::remove_dir_all(&dir).ok();
}

/// Run as a child process with `RESILIENCE_OVERRIDES` naming a file with a syntax error: the
/// first call reads it and refuses it (an error log), and an operator's endpoint can read why.
#[tokio::test]
#[ignore = "run by a_file_refused_at_start_up_can_be_read_back in a child process"]
async fn child_with_a_broken_file_in_the_environment() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::ok())).await;
    assert_eq!(lookup(&c, &server.url("/")).await.unwrap(), 200);
    let refusal = overrides::last_refusal().expect("the file refused at the first call");
    assert!(
        refusal.to_string().contains("overrides.toml:2"),
        "the refusal names the file and line: {refusal}"
    );
    assert!(!overrides::active());
    // A file applied since: nothing refused any more.
    overrides::apply_str(
        "[functions.\"runbook::lookup\"]\ntimeout = \"2s\"\n",
        "fixed.toml",
    )
    .unwrap();
    assert_eq!(overrides::last_refusal(), None);
}

#[test]
fn a_file_refused_at_start_up_can_be_read_back() {
    let (dir, file) = override_file("broken", "[functions.\"runbook::lookup\"]\ntimeout = \n");
    let out = run_child("child_with_a_broken_file_in_the_environment", Some(&file));
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Run as a child process: applies nothing until its parent rewrites the file and sends SIGHUP.
#[tokio::test]
#[ignore = "run by sighup_reloads_the_overrides in a child process"]
async fn child_reloading_on_sighup() {
    overrides::reload_on_sighup().unwrap();
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(
        Action::ok().after(Duration::from_millis(1500)),
    ))
    .await;
    // Registers the function and applies the file as it is now (nothing for it).
    assert!(
        lookup(&c, &server.url("/")).await.is_err(),
        "1 s: too short"
    );
    println!("ready");
    // The parent rewrites the file and sends SIGHUP; wait for the reload (bounded).
    let ready = std::path::PathBuf::from(std::env::var("RUNBOOK_SIGNALLED").unwrap());
    for _ in 0..200 {
        if ready.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..100 {
        if lookup(&c, &server.url("/")).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the SIGHUP reload never lengthened the timeout");
}

#[cfg(unix)]
#[test]
fn sighup_reloads_the_overrides() {
    use std::io::BufRead as _;
    let (dir, file) = override_file("sighup", "");
    let signalled = dir.join("signalled");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_reloading_on_sighup",
            "--nocapture",
        ])
        .env(overrides::ENV, &file)
        .env("RUNBOOK_SIGNALLED", &signalled)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(out).lines();
    assert!(
        lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.contains("ready")),
        "the child did not get ready"
    );
    std::fs::write(
        &file,
        "[functions.\"runbook::lookup\"]\ntimeout = \"5s\"\ndeadline = \"30s\"\n",
    )
    .unwrap();
    let kill = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    std::fs::write(&signalled, "").unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "the child saw no reload");
    std::fs::remove_dir_all(&dir).ok();
}

/// Run as a child process, `RESILIENCE_OVERRIDES` unset: applies a file by hand (the lookup
/// lengthened to 5 s), reloads on SIGHUP, and must keep it across the signal its parent sends
/// (there is no file of the environment's to reload). Then reloads the file by hand on SIGHUP
/// (`reload_file_on_sighup`): the parent rewrites it and signals again.
#[cfg(unix)]
#[tokio::test]
#[ignore = "run by a_sighup_without_the_variable_keeps_the_overrides_applied_by_hand"]
async fn child_keeping_its_overrides_on_sighup() {
    let file = std::path::PathBuf::from(std::env::var("RUNBOOK_FILE").unwrap());
    let signalled = std::path::PathBuf::from(std::env::var("RUNBOOK_SIGNALLED").unwrap());
    let wait_for = |path: std::path::PathBuf| async move {
        for _ in 0..500 {
            if path.exists() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{} never came", path.display());
    };
    overrides::apply_file(&file).unwrap();
    overrides::reload_on_sighup().unwrap();
    // A listener of the test's own: told of the same signal as the reload's task.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).unwrap();
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(
        Action::ok().after(Duration::from_millis(1500)),
    ))
    .await;
    assert!(lookup(&c, &server.url("/")).await.is_ok(), "5 s by hand");
    println!("ready");
    wait_for(signalled.clone()).await;
    // The signal delivered (to this listener, and so to the reload's task, which runs while
    // this one sleeps on the test's one thread), the override is still in force.
    tokio::time::timeout(Duration::from_secs(5), hup.recv())
        .await
        .expect("the SIGHUP came");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(overrides::active(), "the SIGHUP cleared the overrides");
    assert!(
        lookup(&c, &server.url("/")).await.is_ok(),
        "back to 1 s after the SIGHUP"
    );
    // Now the service's own file, reloaded on SIGHUP: the parent shortens the lookup again.
    overrides::reload_file_on_sighup(&file).unwrap();
    println!("again");
    wait_for(signalled.with_extension("again")).await;
    for _ in 0..100 {
        if lookup(&c, &server.url("/")).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the file reloaded on SIGHUP did not shorten the timeout");
}

/// Outside a tokio runtime (a synchronous `main` before the runtime is built): an error, not
/// tokio's panic.
#[cfg(unix)]
#[test]
fn reloading_on_sighup_outside_a_runtime_is_an_error() {
    let e = overrides::reload_on_sighup().unwrap_err();
    assert!(e.to_string().contains("tokio runtime"), "{e}");
    assert!(overrides::reload_file_on_sighup("overrides.toml").is_err());
}

#[cfg(unix)]
#[test]
fn a_sighup_without_the_variable_keeps_the_overrides_applied_by_hand() {
    use std::io::BufRead as _;
    let (dir, file) = override_file(
        "sighup-by-hand",
        "[functions.\"runbook::lookup\"]\ntimeout = \"5s\"\ndeadline = \"30s\"\n",
    );
    let signalled = dir.join("signalled");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_keeping_its_overrides_on_sighup",
            "--nocapture",
        ])
        .env_remove(overrides::ENV)
        .env("RUNBOOK_FILE", &file)
        .env("RUNBOOK_SIGNALLED", &signalled)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(out).lines();
    let mut wait_for = |what: &str| {
        assert!(
            lines
                .by_ref()
                .map_while(Result::ok)
                .any(|l| l.contains(what)),
            "the child did not say {what}"
        );
    };
    let hup = |pid: u32| {
        let kill = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
    };
    wait_for("ready");
    hup(child.id());
    std::fs::write(&signalled, "").unwrap();
    wait_for("again");
    std::fs::write(&file, "[functions.\"runbook::lookup\"]\ntimeout = \"1s\"\n").unwrap();
    hup(child.id());
    std::fs::write(signalled.with_extension("again"), "").unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert!(status.success(), "the child's checks failed: {rest:#?}");
}

#[resilient(
    timeout = "1s",
    deadline = "20s",
    max_attempts = 2,
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn status_page(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// An unkeyed POST, retried only where nothing was sent.
#[resilient(timeout = "1s", deadline = "20s", retry_on = [connect], backoff(initial = "10ms", max = "10ms"), budget = false)]
async fn refund(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.post(url)
        .body("amount=1")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// Run as a child process with `RESILIENCE_OVERRIDES` naming a file that would let `refund`
/// (not called yet when the file is read) be retried after a 503.
#[tokio::test(start_paused = true)]
#[ignore = "run by a_file_is_checked_against_each_function_as_it_becomes_known in a child process"]
async fn child_with_a_file_unsafe_for_a_function_not_called_yet() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    // The first annotated call reads the file: checked against the functions known so far
    // (this one), it applies.
    status_page(&c, &server.url("/")).await.unwrap_err();
    assert_eq!(
        server.count(),
        3,
        "status_page runs under the file's max_attempts = 3 (compiled: 2)"
    );
    server.clear();
    // First called now: the file would resend its unkeyed POST after a 503, so it keeps its
    // compiled policy (retried only on a connect failure), and an error says so.
    let (logs, guard) = support::capture(tracing::Level::ERROR, false);
    refund(&c, &server.url("/")).await.unwrap_err();
    drop(guard);
    assert_eq!(server.count(), 1, "the unkeyed POST went out once");
    let logged = logs.text();
    assert!(
        logged.contains("ERROR")
            && logged.contains("run-time overrides refused for this function")
            && logged.contains("function=\"runbook::refund\"")
            && logged.contains("POST"),
        "{logged}"
    );
    // An operator's endpoint sees it: the file in force does not apply to refund, and why.
    let refused = overrides::refused();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].function, "runbook::refund");
    assert!(
        refused[0].problems.iter().any(|p| p.contains("POST")),
        "{refused:?}"
    );
    assert!(overrides::unmatched().is_empty());
    server.clear();
    // Now that both are known, the same file is refused whole, and each keeps what it had.
    let e = overrides::reload().unwrap_err();
    assert!(
        e.to_string().contains("POST"),
        "the refusal names the rule: {e}"
    );
    status_page(&c, &server.url("/")).await.unwrap_err();
    assert_eq!(server.count(), 3, "status_page keeps the file's setting");
    server.clear();
    refund(&c, &server.url("/")).await.unwrap_err();
    assert_eq!(server.count(), 1, "refund keeps its compiled policy");
    assert_eq!(overrides::refused().len(), 1, "the file is still in force");
    overrides::clear();
    assert!(overrides::refused().is_empty(), "no file in force");
}

/// The README's "In production" promise, as the runtime can keep it: a file is checked against
/// every function the process has called (the runtime learns of a function at its first
/// call), and against each function called later as it becomes known; `resilience check
/// --overrides` checks it against every function of the crate before it is deployed.
#[test]
fn a_file_is_checked_against_each_function_as_it_becomes_known() {
    let (dir, file) = override_file(
        "unsafe",
        "[defaults]\nmax_attempts = 3\nretry_on = [\"connect\", \"reset\", \"timeout\", 503]\n",
    );
    let out = run_child(
        "child_with_a_file_unsafe_for_a_function_not_called_yet",
        Some(&file),
    );
    std::fs::remove_dir_all(&dir).ok();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("1 passed"), "the child test ran: {stdout}");
}

/// Two impls of one type at different generic arguments, in one module: their methods share a
/// path (`runbook::Gateway::charge`), so they share the inline breaker registered under it.
struct Gateway<T>(std::marker::PhantomData<T>);

impl Gateway<u8> {
    #[resilient(
        timeout = "1s",
        max_attempts = 1,
        budget = false,
        breaker = { failure_rate = 0.5, min_calls = 10, window = 10, open_for = "1m", half_open_calls = 1 }
    )]
    async fn charge(&self, c: &reqwest::Client, url: &str) -> Result<u16, Error> {
        Ok(c.get(url).send().await?.status().as_u16())
    }
}

impl Gateway<u16> {
    #[resilient(
        timeout = "1s",
        max_attempts = 1,
        budget = false,
        breaker = { failure_rate = 0.5, min_calls = 10, window = 10, open_for = "1m", half_open_calls = 1 }
    )]
    async fn charge(&self, c: &reqwest::Client, url: &str) -> Result<u16, Error> {
        Ok(c.get(url).send().await?.status().as_u16())
    }
}

/// An operator who opens the breaker by the path `resilience list` prints stops every
/// function of that path, not only the one whose breaker was registered first.
#[tokio::test(start_paused = true)]
async fn a_breaker_opened_by_path_stops_every_function_of_the_path() {
    let c = reqwest::Client::new();
    let healthy = FaultServer::start(Script::always(Action::ok())).await;
    let (a, b) = (
        Gateway::<u8>(Default::default()),
        Gateway::<u16>(Default::default()),
    );
    a.charge(&c, &healthy.url("/")).await.unwrap();
    b.charge(&c, &healthy.url("/")).await.unwrap();
    breakers::force_open("runbook::Gateway::charge").unwrap();
    for e in [
        a.charge(&c, &healthy.url("/")).await.unwrap_err(),
        b.charge(&c, &healthy.url("/")).await.unwrap_err(),
    ] {
        assert_eq!(e.kind(), ErrorKind::CircuitOpen, "{e}");
    }
    assert_eq!(healthy.count(), 2, "nothing sent while open");
    breakers::reset("runbook::Gateway::charge").unwrap();
}

/// Run as a child process with `RESILIENCE_OVERRIDES` set: the service applies a file of its
/// own before its first call (2.5 s against the environment's 1.5 s), or in a second run
/// clears every override (the compiled 1 s against the environment's 3 s); what it did by
/// hand is in force at the first call, not the environment's file read then.
#[tokio::test(start_paused = true)]
#[ignore = "run by a_file_applied_before_the_first_call_is_not_replaced_by_the_environments"]
async fn child_applying_by_hand_before_the_first_call() {
    let c = reqwest::Client::new();
    let server =
        FaultServer::start(Script::always(Action::ok().after(Duration::from_secs(2)))).await;
    match std::env::var("RUNBOOK_BY_HAND").as_deref() {
        // The hand file's own 2.5 s: the answer at 2 s comes in time.
        Ok("apply") => {
            overrides::apply_str(
                "[functions.\"runbook::lookup\"]\ntimeout = \"2500ms\"\ndeadline = \"20s\"\n",
                "by-hand.toml",
            )
            .unwrap();
            let started = tokio::time::Instant::now();
            assert_eq!(lookup(&c, &server.url("/")).await.unwrap(), 200);
            assert!(started.elapsed() < Duration::from_secs(3));
            let changes = overrides::reload().unwrap();
            assert!(
                changes
                    .iter()
                    .any(|c| c.setting == "timeout" && c.new == "1500ms"),
                "reload reads the environment's file again: {changes:?}"
            );
        }
        // Cleared by hand: the compiled 1 s, whatever the environment says.
        _ => {
            assert!(!overrides::clear().is_empty() || !overrides::active());
            let e = lookup(&c, &server.url("/")).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::AttemptTimeout, "{e}");
        }
    }
}

#[test]
fn a_file_applied_before_the_first_call_is_not_replaced_by_the_environments() {
    for (how, timeout) in [("apply", "1500ms"), ("clear", "3s")] {
        let (dir, file) = override_file(
            &format!("by-hand-{how}"),
            &format!(
                "[functions.\"runbook::lookup\"]\ntimeout = \"{timeout}\"\ndeadline = \"30s\"\n"
            ),
        );
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "child_applying_by_hand_before_the_first_call",
            ])
            .env(overrides::ENV, &file)
            .env("RUNBOOK_BY_HAND", how)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{how}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
