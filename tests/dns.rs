//! A name that does not resolve for a while (`EAI_AGAIN`: the resolver timed out or the DNS
//! server was briefly unreachable), through a resolver of the test's own on 127.0.0.1: the
//! request was never sent, so it is retried whatever its method, as a connect failure; and a
//! name that never resolves ends the call after its attempts, nothing sent. A name the
//! system's resolver says does not exist (`EAI_NONAME`, as a misspelt host gets) is not tried
//! again: the next lookup gets the same answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use resilience_fault_server::{Action, FaultServer, Script};
use resilience_runtime::{Class, Error, resilient};

/// Fails its first `failures` lookups as a resolver does when the DNS server does not answer,
/// then resolves every name to `addr`.
struct Flaky {
    addr: SocketAddr,
    failures: usize,
    lookups: AtomicUsize,
}

impl reqwest::dns::Resolve for Flaky {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let n = self.lookups.fetch_add(1, Ordering::SeqCst);
        let (addr, fail) = (self.addr, n < self.failures);
        Box::pin(async move {
            if fail {
                let e = std::io::Error::other("Temporary failure in name resolution");
                return Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>);
            }
            let addrs: reqwest::dns::Addrs = Box::new(std::iter::once(addr));
            Ok(addrs)
        })
    }
}

fn client_with(resolver: Arc<Flaky>) -> reqwest::Client {
    reqwest::Client::builder()
        .dns_resolver(resolver)
        .retry(reqwest::retry::never())
        .build()
        .unwrap()
}

/// An unkeyed POST, retried only where nothing was sent.
#[resilient(
    timeout = "1s",
    deadline = "10s",
    retry_on = [connect],
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn submit(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.post(url)
        .body("form")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[tokio::test(start_paused = true)]
async fn a_name_that_resolves_again_is_retried_and_sent_once() {
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let resolver = Arc::new(Flaky {
        addr: server.addr(),
        failures: 1,
        lookups: AtomicUsize::new(0),
    });
    let c = client_with(resolver.clone());
    let url = format!("http://orders.internal:{}/forms", server.addr().port());
    assert_eq!(submit(&c, &url).await.unwrap(), 200);
    assert_eq!(resolver.lookups.load(Ordering::SeqCst), 2);
    assert_eq!(server.count(), 1, "the POST went out once");
}

#[tokio::test(start_paused = true)]
async fn a_name_that_never_resolves_ends_the_call_after_its_attempts() {
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let resolver = Arc::new(Flaky {
        addr: server.addr(),
        failures: usize::MAX,
        lookups: AtomicUsize::new(0),
    });
    let c = client_with(resolver.clone());
    let url = format!("http://orders.internal:{}/forms", server.addr().port());
    let e = submit(&c, &url).await.unwrap_err();
    assert_eq!(e.class(), Some(Class::Connect), "{e}");
    assert_eq!(e.attempts(), 3, "{e}");
    assert_eq!(server.count(), 0);
}

/// A host name the system's resolver refuses as it refuses a name that does not exist
/// (`EAI_NONAME`, "Name or service not known"), without asking a DNS server: a label longer
/// than DNS allows (63 bytes), which no query can carry. The request goes through reqwest's
/// own resolver, as every client built without `dns_resolver` does.
fn unknown_host_url(port: u16) -> String {
    format!("http://{}.example:{port}/forms", "x".repeat(64))
}

/// The same policy, for a GET: retried on everything transient.
#[resilient(
    timeout = "1s",
    deadline = "10s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false,
    breaker = { failure_rate = 0.5, min_calls = 1, window = 2, open_for = "30s" }
)]
async fn fetch(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[tokio::test]
async fn a_name_that_does_not_exist_is_not_tried_again_nor_held_against_the_breaker() {
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let c = reqwest::Client::builder()
        .retry(reqwest::retry::never())
        .build()
        .unwrap();
    let url = unknown_host_url(server.addr().port());
    let e = submit(&c, &url).await.unwrap_err();
    assert_eq!(e.class(), Some(Class::Permanent), "{e}");
    assert_eq!(e.attempts(), 1, "{e}");
    // What the resolver said is in the error's chain, as a report that walks it shows.
    let mut chain = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(c) = cur {
        chain.push(c.to_string());
        cur = c.source();
    }
    let shown = chain.join(": ");
    assert!(
        shown.contains("failed to lookup address information"),
        "{shown}"
    );

    let e = fetch(&c, &url).await.unwrap_err();
    assert_eq!(e.class(), Some(Class::Permanent), "{e}");
    assert_eq!(e.attempts(), 1, "{e}");
    assert_eq!(server.count(), 0);
    // Not the dependency's failure: its breaker (opened by one failure in a window of two)
    // lets the next call through.
    let ok = format!("http://127.0.0.1:{}/forms", server.addr().port());
    assert_eq!(fetch(&c, &ok).await.unwrap(), 200);
    assert_eq!(fetch(&c, &url).await.unwrap_err().attempts(), 1);
    assert_eq!(fetch(&c, &ok).await.unwrap(), 200);
}
