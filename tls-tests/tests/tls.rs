//! Failures in the TLS handshake, against a TLS server of the test's own on 127.0.0.1 (rustls,
//! with a self-signed certificate for `localhost`), through reqwest's own rustls.
//!
//! A handshake the server cut short (its connection reset while the client waited for its
//! answer) sent nothing and may go better next time: a connect failure, retried whatever the
//! method. A handshake that failed on what the two ends are (a certificate the client does not
//! trust, or issued for another name; a server that does not speak TLS on that port; no
//! protocol version in common) fails the same way the next time: permanent, the call ends
//! after its first attempt, and no breaker counts it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use resilience_runtime::{Class, Error, resilient};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, ServerConfig};

const CERT: &[u8] = include_bytes!("certs/localhost.crt");
const KEY: &[u8] = include_bytes!("certs/localhost.key");

/// A TLS server on loopback: it resets its first `resets` connections once the client's hello
/// has arrived, and answers every request after a handshake `200 ok`.
struct TlsServer {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

impl TlsServer {
    async fn start(resets: usize, versions: &[&'static rustls::SupportedProtocolVersion]) -> Self {
        let cert = CertificateDer::from_pem_slice(CERT).unwrap();
        let key = PrivateKeyDer::from_pem_slice(KEY).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (seen, served) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    return;
                };
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let (acceptor, served) = (acceptor.clone(), served.clone());
                tokio::spawn(async move {
                    if n < resets {
                        // The client's hello, then a reset instead of the server's.
                        let mut hello = [0u8; 16];
                        let _ = tcp.read(&mut hello).await;
                        let _ = tcp.set_zero_linger();
                        return;
                    }
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service =
                        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                            let served = served.clone();
                            async move {
                                let _ = req.into_body().collect().await;
                                served.fetch_add(1, Ordering::SeqCst);
                                Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::from(
                                    "ok",
                                ))))
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsServer {
            addr,
            connections,
            requests,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// A client that trusts the test's certificate alone and finds `name` at `addr`.
fn trusting(name: &str, addr: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(CERT).unwrap()])
        .resolve(name, addr)
        .retry(reqwest::retry::never())
        .build()
        .unwrap()
}

/// An unkeyed POST: retried only where nothing was sent.
#[resilient(
    timeout = "2s",
    deadline = "10s",
    retry_on = [connect],
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn submit(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.post(url)
        .body("form")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// A GET, retried on everything transient.
#[resilient(
    timeout = "2s",
    deadline = "10s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn fetch(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

/// The same GET behind a breaker that one failure in a window of two opens (one test's own:
/// a breaker is the function's, shared by the tests that run at once).
#[resilient(
    timeout = "2s",
    deadline = "10s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false,
    breaker = { failure_rate = 0.5, min_calls = 1, window = 2, open_for = "30s" }
)]
async fn guarded(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

/// The error and its causes, as a report that walks its chain shows them.
fn chain(e: &Error) -> String {
    let mut all = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        all.push(c.to_string());
        cur = c.source();
    }
    all.join(": ")
}

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

#[tokio::test]
async fn a_handshake_cut_short_is_retried_and_the_post_sent_once() {
    let server = TlsServer::start(1, BOTH).await;
    let c = trusting("localhost", server.addr);
    let url = format!("https://localhost:{}/forms", server.addr.port());
    assert_eq!(submit(&c, &url).await.unwrap(), "ok");
    assert_eq!(
        server.connections(),
        2,
        "the reset handshake, then the one answered"
    );
    assert_eq!(server.requests(), 1, "the POST went out once");
}

#[tokio::test]
async fn a_handshake_reset_every_time_ends_after_the_attempts_as_a_connect_failure() {
    let server = TlsServer::start(usize::MAX, BOTH).await;
    let c = trusting("localhost", server.addr);
    let url = format!("https://localhost:{}/forms", server.addr.port());
    let e = submit(&c, &url).await.unwrap_err();
    assert_eq!(e.class(), Some(Class::Connect), "{}", chain(&e));
    assert_eq!(e.attempts(), 3, "{}", chain(&e));
    assert_eq!(server.requests(), 0);
}

#[tokio::test]
async fn a_certificate_the_client_does_not_trust_ends_the_call_at_once() {
    let server = TlsServer::start(0, BOTH).await;
    // The client as most services build it: the platform's roots, which do not hold the
    // test's certificate.
    let c = reqwest::Client::builder()
        .resolve("localhost", server.addr)
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/orders", server.addr.port());
    let e = fetch(&c, &url).await.unwrap_err();
    assert_eq!(e.class(), Some(Class::Permanent), "{}", chain(&e));
    assert_eq!(e.attempts(), 1, "{}", chain(&e));
    assert!(
        chain(&e).contains("invalid peer certificate"),
        "{}",
        chain(&e)
    );
    assert_eq!(server.connections(), 1);
    assert_eq!(server.requests(), 0);
    let e = submit(&c, &url).await.unwrap_err();
    assert_eq!(e.class(), Some(Class::Permanent), "{}", chain(&e));
    assert_eq!(e.attempts(), 1, "{}", chain(&e));

    // No breaker counts it: the same function, given a client that trusts the certificate,
    // goes through (one failure in a window of two opens this breaker).
    let e = guarded(&c, &url).await.unwrap_err();
    assert_eq!(e.class(), Some(Class::Permanent), "{}", chain(&e));
    let trusted = trusting("localhost", server.addr);
    assert_eq!(guarded(&trusted, &url).await.unwrap(), "ok");
    assert_eq!(guarded(&c, &url).await.unwrap_err().attempts(), 1);
    assert_eq!(guarded(&trusted, &url).await.unwrap(), "ok");
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn a_certificate_for_another_name_ends_the_call_at_once() {
    let server = TlsServer::start(0, BOTH).await;
    let c = trusting("payments.internal", server.addr);
    let url = format!("https://payments.internal:{}/charges", server.addr.port());
    let e = fetch(&c, &url).await.unwrap_err();
    assert_eq!(e.class(), Some(Class::Permanent), "{}", chain(&e));
    assert_eq!(e.attempts(), 1, "{}", chain(&e));
    assert!(
        chain(&e).contains("invalid peer certificate"),
        "{}",
        chain(&e)
    );
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn no_protocol_version_in_common_ends_the_call_at_once() {
    // A server of TLS 1.2 alone, a client of TLS 1.3 alone: the server refuses the hello with
    // a `protocol_version` alert.
    let server = TlsServer::start(0, &[&rustls::version::TLS12]).await;
    let c = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(CERT).unwrap()])
        .tls_version_min(reqwest::tls::Version::TLS_1_3)
        .resolve("localhost", server.addr)
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/orders", server.addr.port());
    let e = fetch(&c, &url).await.unwrap_err();
    assert_eq!(e.class(), Some(Class::Permanent), "{}", chain(&e));
    assert_eq!(e.attempts(), 1, "{}", chain(&e));
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn https_to_a_port_that_speaks_plain_http_ends_the_call_at_once() {
    // An HTTP/1.1 server (hyper's, as an axum service runs) that answers what it cannot parse
    // with a 400: the client's hello gets an answer that is no TLS record.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req: hyper::Request<Incoming>| async {
                    Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::from("ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    let c = reqwest::Client::new();
    let url = format!("https://127.0.0.1:{}/orders", addr.port());
    let e = fetch(&c, &url).await.unwrap_err();
    assert_eq!(e.class(), Some(Class::Permanent), "{}", chain(&e));
    assert_eq!(e.attempts(), 1, "{}", chain(&e));
}
