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
