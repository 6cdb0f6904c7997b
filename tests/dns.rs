//! A name that does not resolve for a while (`EAI_AGAIN`: the resolver timed out or the DNS
//! server was briefly unreachable), through a resolver of the test's own on 127.0.0.1: the
//! request was never sent, so it is retried whatever its method, as a connect failure; and a
//! name that never resolves ends the call after its attempts, nothing sent.

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
