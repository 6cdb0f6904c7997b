//! Methods of two types of one name (`stripe::Client`, `adyen::Client`) in one module get one
//! path (it keeps a type's last segment), and so share what is registered under it: the
//! runtime says so, naming both types, at the second one's first call.
//!
//! Alone in its test binary: a thread-scoped subscriber can miss events whose callsites another
//! test thread hit first.

mod support;

use resilience_fault_server::{Action, FaultServer, Script};
use resilience_runtime::{Error, resilient};

mod stripe {
    pub struct Client;
}

mod adyen {
    pub struct Client;
}

impl stripe::Client {
    #[resilient(timeout = "1s", max_attempts = 1, budget = false)]
    async fn charge(&self, c: &reqwest::Client, url: &str) -> Result<u16, Error> {
        Ok(c.get(url).send().await?.status().as_u16())
    }
}

impl adyen::Client {
    #[resilient(timeout = "1s", max_attempts = 1, budget = false)]
    async fn charge(&self, c: &reqwest::Client, url: &str) -> Result<u16, Error> {
        Ok(c.get(url).send().await?.status().as_u16())
    }
}

#[tokio::test(start_paused = true)]
async fn two_types_of_one_name_sharing_a_path_are_warned_about() {
    let (buf, _guard) = support::capture(tracing::Level::WARN, false);

    let server = FaultServer::start(Script::always(Action::ok())).await;
    let c = reqwest::Client::new();
    assert_eq!(
        stripe::Client.charge(&c, &server.url("/")).await.unwrap(),
        200
    );
    let out = buf.text();
    assert!(
        !out.contains("share the path"),
        "one function so far: {out}"
    );
    assert_eq!(
        adyen::Client.charge(&c, &server.url("/")).await.unwrap(),
        200
    );
    let out = buf.text();
    assert!(
        out.contains("two functions of different types share the path")
            && out.contains("path_collision::Client::charge")
            && out.contains("stripe::Client")
            && out.contains("adyen::Client"),
        "{out}"
    );
}

/// A call whose breaker opens after two failures of two, declared in `first`.
async fn first(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    #[resilient(
        timeout = "1s",
        max_attempts = 1,
        budget = false,
        breaker = { failure_rate = 0.5, min_calls = 2, window = 2, open_for = "60s", half_open_calls = 1 },
    )]
    async fn call(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
        Ok(c.get(url)
            .send()
            .await?
            .error_for_status()?
            .status()
            .as_u16())
    }
    call(c, url).await
}

/// Another function of the same name and policy, declared in `second` (a test's own helper,
/// as two `#[tokio::test]`s each declare theirs).
async fn second(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    #[resilient(
        timeout = "1s",
        max_attempts = 1,
        budget = false,
        breaker = { failure_rate = 0.5, min_calls = 2, window = 2, open_for = "60s", half_open_calls = 1 },
    )]
    async fn call(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
        Ok(c.get(url)
            .send()
            .await?
            .error_for_status()?
            .status()
            .as_u16())
    }
    call(c, url).await
}

/// Functions declared in the bodies of two functions are named after them
/// (`path_collision::first::call`, as `resilience list` names them): two paths, two breakers.
/// The first one's open breaker does not refuse the second's calls.
#[tokio::test(start_paused = true)]
async fn functions_of_one_name_declared_in_two_functions_have_two_paths() {
    let c = reqwest::Client::new();
    let down = FaultServer::start(Script::always(Action::status(503))).await;
    let up = FaultServer::start(Script::always(Action::ok())).await;
    for _ in 0..2 {
        first(&c, &down.url("/")).await.unwrap_err();
    }
    let refused = first(&c, &up.url("/")).await.unwrap_err();
    assert_eq!(
        refused.kind(),
        resilience_runtime::ErrorKind::CircuitOpen,
        "{refused}"
    );
    assert_eq!(second(&c, &up.url("/")).await.unwrap(), 200);
    assert_eq!(up.count(), 1, "the second's call went out");
    let paths: Vec<&str> = resilience_runtime::metrics::all()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert!(
        paths.contains(&"path_collision::first::call")
            && paths.contains(&"path_collision::second::call"),
        "{paths:?}"
    );
    let b = resilience_runtime::breakers::state("path_collision::second::call").unwrap();
    assert_eq!(b.state, resilience_runtime::breakers::BreakerState::Closed);
}

/// Two types in one module, each with an `async` method `get` declaring its own `call`: named
/// after the method's own path (`path_collision::Ledger::get::call`), two paths, two breakers
/// (both were `path_collision::get::call`, one breaker, one override for both).
struct Ledger;
struct Catalog;

impl Ledger {
    async fn get(&self, c: &reqwest::Client, url: &str) -> Result<u16, Error> {
        #[resilient(
            timeout = "1s",
            max_attempts = 1,
            budget = false,
            breaker = { failure_rate = 0.5, min_calls = 2, window = 2, open_for = "60s", half_open_calls = 1 },
        )]
        async fn call(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
            Ok(c.get(url)
                .send()
                .await?
                .error_for_status()?
                .status()
                .as_u16())
        }
        call(c, url).await
    }
}

impl Catalog {
    async fn get(&self, c: &reqwest::Client, url: &str) -> Result<u16, Error> {
        #[resilient(
            timeout = "1s",
            max_attempts = 1,
            budget = false,
            breaker = { failure_rate = 0.5, min_calls = 2, window = 2, open_for = "60s", half_open_calls = 1 },
        )]
        async fn call(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
            Ok(c.get(url)
                .send()
                .await?
                .error_for_status()?
                .status()
                .as_u16())
        }
        call(c, url).await
    }
}

#[tokio::test(start_paused = true)]
async fn functions_of_one_name_declared_in_two_types_methods_of_one_name_have_two_paths() {
    let c = reqwest::Client::new();
    let down = FaultServer::start(Script::always(Action::status(503))).await;
    let up = FaultServer::start(Script::always(Action::ok())).await;
    for _ in 0..2 {
        Ledger.get(&c, &down.url("/")).await.unwrap_err();
    }
    let refused = Ledger.get(&c, &up.url("/")).await.unwrap_err();
    assert_eq!(
        refused.kind(),
        resilience_runtime::ErrorKind::CircuitOpen,
        "{refused}"
    );
    assert_eq!(Catalog.get(&c, &up.url("/")).await.unwrap(), 200);
    let paths: Vec<&str> = resilience_runtime::metrics::all()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert!(
        paths.contains(&"path_collision::Ledger::get::call")
            && paths.contains(&"path_collision::Catalog::get::call"),
        "{paths:?}"
    );
}
