//! Run-time overrides by section and by setting, in one test (one process: the override file
//! is process-wide). `[policies.NAME]` applies to the functions of that policy, a
//! `[functions."path"]` section wins over it, and each overridable setting changes what a
//! call does: `max_attempts`, `max_retry_after`, `retry_on`, `backoff`.

use std::time::Duration;

mod support;

use resilience_fault_server::{Action, FaultServer, Script};
use resilience_runtime::{Error, ErrorKind, overrides, resilient};
use tokio::time::Instant;

/// `[policies.search]` of the file: 4 attempts, 503 retried.
#[resilient(config = "tests/policies/precedence.toml", policy = "search")]
async fn search(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

/// Attempts one call made against a server answering `action` to every request.
async fn attempts(action: Action) -> (u32, Result<String, Error>, Duration) {
    let server = FaultServer::start(Script::always(action)).await;
    let started = Instant::now();
    let out = search(&reqwest::Client::new(), &server.url("/q")).await;
    (server.count() as u32, out, started.elapsed())
}

/// Two impls of one type at different generic arguments: their methods share one path,
/// `override_layers::Gateway::fetch`.
struct Gateway<T>(std::marker::PhantomData<T>);

impl Gateway<u8> {
    #[resilient(method = GET, timeout = "1s", max_attempts = 3, backoff(initial = "1ms", max = "1ms"), budget = false)]
    async fn fetch(&self, c: &reqwest::Client, url: &str) -> Result<String, Error> {
        Ok(c.get(url).send().await?.error_for_status()?.text().await?)
    }
}

impl Gateway<u16> {
    #[resilient(method = GET, timeout = "1s", max_attempts = 3, backoff(initial = "1ms", max = "1ms"), budget = false)]
    async fn fetch(&self, c: &reqwest::Client, url: &str) -> Result<String, Error> {
        Ok(c.get(url).send().await?.error_for_status()?.text().await?)
    }
}

/// Three attempts a second apart.
#[resilient(method = GET, timeout = "1s", max_attempts = 3, backoff(kind = constant, initial = "1s", jitter = none), budget = false)]
async fn waiting(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

fn apply(text: &str) {
    overrides::apply_str(text, "incident.toml").unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(start_paused = true)]
async fn each_section_and_setting_changes_the_calls() {
    let unavailable = || Action::status(503);
    assert_eq!(attempts(unavailable()).await.0, 4, "compiled: 4 attempts");

    // The policy's section applies to its functions; the change is logged, at warn level,
    // with the function, the setting, and the values before and after.
    let (logs, guard) = support::capture(tracing::Level::WARN, false);
    apply("[policies.search]\nmax_attempts = 2\n");
    drop(guard);
    let logged = logs.text();
    assert!(
        logged.contains("WARN")
            && logged.contains("run-time override applied")
            && logged.contains("function=\"override_layers::search\"")
            && logged.contains("setting=\"max_attempts\"")
            && logged.contains("old=4")
            && logged.contains("new=2"),
        "{logged}"
    );
    assert_eq!(attempts(unavailable()).await.0, 2, "[policies.search]");

    // The function's own section wins over its policy's.
    apply(
        "[policies.search]\nmax_attempts = 2\n[functions.\"override_layers::search\"]\nmax_attempts = 3\n",
    );
    assert_eq!(
        attempts(unavailable()).await.0,
        3,
        "[functions] over [policies]"
    );

    // The same read from a file, as an operator's endpoint applies it; a file that cannot be
    // read is refused with its name, and what is in force stays.
    let dir = std::env::temp_dir().join(format!("override_layers_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("incident.toml");
    std::fs::write(&file, "[policies.search]\nmax_attempts = 2\n").unwrap();
    overrides::apply_file(&file).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(attempts(unavailable()).await.0, 2, "apply_file");
    let e = overrides::apply_file(dir.join("missing.toml")).unwrap_err();
    assert!(e.to_string().contains("missing.toml: cannot read"), "{e}");
    assert_eq!(attempts(unavailable()).await.0, 2, "kept after a refusal");
    std::fs::remove_dir_all(&dir).ok();

    // `[defaults]` applies to every function, under `[policies.NAME]`.
    apply("[defaults]\nmax_attempts = 2\n");
    assert_eq!(attempts(unavailable()).await.0, 2, "[defaults]");
    apply("[defaults]\nmax_attempts = 2\n[policies.search]\nmax_attempts = 3\n");
    assert_eq!(
        attempts(unavailable()).await.0,
        3,
        "[policies] over [defaults]"
    );

    // max_retry_after: a 503 asking for 5 s ends the call at once under a 1 s bound.
    apply("[functions.\"override_layers::search\"]\nmax_retry_after = \"1s\"\n");
    let (n, out, took) = attempts(Action::status(503).retry_after(5)).await;
    assert_eq!(n, 1, "Retry-After above the overridden max_retry_after");
    assert_eq!(out.unwrap_err().http_status(), Some(503));
    assert!(took < Duration::from_secs(1), "{took:?}");

    // retry_on: connect failures only, a 503 is not retried.
    apply("[functions.\"override_layers::search\"]\nretry_on = [\"connect\"]\n");
    assert_eq!(attempts(unavailable()).await.0, 1, "retry_on = [connect]");

    // backoff: 2 s between attempts (the file's is 1-2 ms); the deadline is raised with it.
    apply(
        "[functions.\"override_layers::search\"]\nmax_attempts = 2\ndeadline = \"30s\"\nbackoff = { initial = \"2s\", max = \"2s\", jitter = \"none\" }\n",
    );
    let (n, _, took) = attempts(unavailable()).await;
    assert_eq!(n, 2);
    assert!(
        took >= Duration::from_secs(2),
        "backoff overridden: {took:?}"
    );

    // The shorthand resilience.toml takes, `backoff = "constant"`, is its kind here too
    // (a line copied from the policy file once had the whole file refused).
    let changes = overrides::apply_str(
        "[functions.\"override_layers::search\"]\nbackoff = \"constant\"\n",
        "incident.toml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let kind: Vec<_> = changes
        .iter()
        .filter(|c| c.function == "override_layers::search" && c.setting == "backoff.kind")
        .map(|c| (c.old.as_str(), c.new.as_str()))
        .collect();
    assert_eq!(kind, [("exponential", "constant")], "{changes:?}");
    // A constant wait longer than the (unused) max of 2 s: 3 s every time.
    apply(
        "[functions.\"override_layers::search\"]\nmax_attempts = 2\ndeadline = \"30s\"\nbackoff = { kind = \"constant\", initial = \"3s\", jitter = \"none\" }\n",
    );
    let (n, _, took) = attempts(unavailable()).await;
    assert_eq!(n, 2);
    assert!(took >= Duration::from_secs(3), "constant 3s: {took:?}");

    // Integers in the other bases TOML writes: `0b10` is two attempts (not ten), `0x1F7` is
    // status 503.
    apply("[functions.\"override_layers::search\"]\nmax_attempts = 0b10\n");
    assert_eq!(attempts(unavailable()).await.0, 2, "max_attempts = 0b10");
    apply("[functions.\"override_layers::search\"]\nmax_attempts = 0o3\nretry_on = [0x1F7]\n");
    assert_eq!(attempts(unavailable()).await.0, 3, "retry_on = [0x1F7]");
    // A number past `u32` is refused as written, not cut down to 4294967295.
    let e = overrides::apply_str(
        "[functions.\"override_layers::search\"]\nmax_attempts = 5000000000\n",
        "incident.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("max_attempts = 5000000000 is outside 1..=10"),
        "{e}"
    );
    // A setting written above every section says where it goes (it once said to make it a
    // section of its own, `[timeout]`, which is refused as unknown).
    let e = overrides::apply_str("timeout = \"5s\"\n", "incident.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("incident.toml:1:1")
            && e.contains("`timeout` outside a section: settings go under [defaults]"),
        "{e}"
    );

    // A section that names no function called so far (a misspelled path) or no policy
    // applies to nothing, silently: `unmatched()` lists it for an operator to see.
    apply(
        "[functions.\"override_layers::serach\"]\nmax_attempts = 1\n[functions.\"override_layers::search\"]\nmax_attempts = 2\n[policies.nosuch]\ntimeout = \"1s\"\n",
    );
    assert_eq!(
        overrides::unmatched(),
        ["functions.\"override_layers::serach\"", "policies.nosuch"]
    );
    assert_eq!(attempts(unavailable()).await.0, 2, "the one spelled right");
    // `reload()` with `RESILIENCE_OVERRIDES` unset removes every override, those applied by
    // hand too.
    if std::env::var_os(overrides::ENV).is_none() {
        let changes = overrides::reload().unwrap_or_else(|e| panic!("{e}"));
        assert!(!overrides::active(), "{changes:?}");
        assert_eq!(attempts(unavailable()).await.0, 4, "the compiled policy");
    }

    // Two functions of one name in two modules: an override by one's path leaves the other
    // alone; one around a nested call leaves the nested call's policy alone.
    let server = FaultServer::start(Script::always(unavailable())).await;
    let (url, client) = (server.url("/r"), reqwest::Client::new());
    apply("[functions.\"override_layers::eu::lookup\"]\nmax_attempts = 1\n");
    assert_eq!(eu::lookup(&client, &url).await.unwrap_err().attempts(), 1);
    assert_eq!(us::lookup(&client, &url).await.unwrap_err().attempts(), 3);
    apply("[functions.\"override_layers::us::around\"]\nmax_attempts = 1\n");
    let before = server.count();
    let e = us::around(&client, &url).await.unwrap_err();
    assert_eq!(
        (e.attempts(), server.count() - before),
        (3, 3),
        "the nested lookup's own three, once: {e}"
    );

    // Emptied: the compiled policy again.
    apply("");
    assert!(overrides::unmatched().is_empty());
    let (n, out, took) = attempts(unavailable()).await;
    assert_eq!(n, 4);
    assert_eq!(out.unwrap_err().kind(), ErrorKind::Call);
    assert!(took < Duration::from_secs(1), "{took:?}");

    // Two impls sharing a path: an override by that path applies to both.
    let server = FaultServer::start(Script::always(unavailable())).await;
    let url = server.url("/g");
    let client = reqwest::Client::new();
    let bytes = Gateway::<u8>(std::marker::PhantomData);
    let words = Gateway::<u16>(std::marker::PhantomData);
    assert_eq!(bytes.fetch(&client, &url).await.unwrap_err().attempts(), 3);
    assert_eq!(words.fetch(&client, &url).await.unwrap_err().attempts(), 3);
    apply("[functions.\"override_layers::Gateway::fetch\"]\nmax_attempts = 1\n");
    assert_eq!(bytes.fetch(&client, &url).await.unwrap_err().attempts(), 1);
    assert_eq!(words.fetch(&client, &url).await.unwrap_err().attempts(), 1);
    apply("");

    // A call holds the policy it started with to its end: one begun before a file that cuts
    // its attempts to one still makes its three, and one begun after makes one.
    let server = FaultServer::start(Script::always(unavailable())).await;
    let url = server.url("/w");
    let client = reqwest::Client::new();
    let before = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move { waiting(&client, &url).await }
    });
    // Its first attempt answered, it waits out its 1 s backoff when the file arrives.
    for _ in 0..100 {
        if server.count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(server.count(), 1, "the first attempt answered");
    apply("[functions.\"override_layers::waiting\"]\nmax_attempts = 1\n");
    let after = waiting(&client, &url).await.unwrap_err();
    assert_eq!(after.attempts(), 1, "{after}");
    assert!(!before.is_finished());
    let before = before.await.unwrap().unwrap_err();
    assert_eq!(before.attempts(), 3, "{before}");
    assert_eq!(server.count(), 4);
    apply("");

    // A constant backoff may start above its `max` (never used); a file that makes it
    // exponential breaks the order, and the refusal points at the kind it set (it once said
    // `incident.toml:1:1`).
    let server = FaultServer::start(Script::always(Action::ok())).await;
    steady(&client, &server.url("/s")).await.unwrap();
    let e = overrides::apply_str(
        "# incident 42\n[functions.\"override_layers::steady\"]\nbackoff = \"exponential\"\n",
        "incident.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("incident.toml:3:"), "{e}");
}

mod eu {
    use resilience_runtime::{Error, resilient};

    #[resilient(method = GET, timeout = "1s", max_attempts = 3, backoff(initial = "1ms", max = "1ms"), budget = false)]
    pub async fn lookup(c: &reqwest::Client, url: &str) -> Result<String, Error> {
        Ok(c.get(url).send().await?.error_for_status()?.text().await?)
    }
}

mod us {
    use resilience_runtime::{Error, resilient};

    #[resilient(method = GET, timeout = "1s", max_attempts = 3, backoff(initial = "1ms", max = "1ms"), budget = false)]
    pub async fn lookup(c: &reqwest::Client, url: &str) -> Result<String, Error> {
        Ok(c.get(url).send().await?.error_for_status()?.text().await?)
    }

    #[resilient(method = GET, timeout = "5s", max_attempts = 3, backoff(initial = "1ms", max = "1ms"), budget = false)]
    pub async fn around(c: &reqwest::Client, url: &str) -> Result<String, Error> {
        lookup(c, url).await
    }
}

#[resilient(method = GET, timeout = "1s", deadline = "20s", max_attempts = 2, backoff(kind = constant, initial = "3s", max = "1s", jitter = none), budget = false)]
async fn steady(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}
