//! An HTTP/2 server that refuses a stream before processing it (`REFUSED_STREAM`, what a server
//! draining for a deploy or at its stream limit sends): the request was never processed, so
//! even an unkeyed POST may go again. The policy cannot tell that reset from one after the POST
//! was processed; reqwest can, and a client built from `ClientSettings` (or `client!`) keeps
//! reqwest's retry of exactly those.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use resilience_runtime::{ClientSettings, Error, resilient};

/// An h2c server on 127.0.0.1 that refuses its first `refuse` streams and answers the others
/// 201, counting the streams opened and the bodies it processed.
struct Refusing {
    url: String,
    streams: Arc<AtomicUsize>,
    processed: Arc<AtomicUsize>,
}

/// Serves h2c on every connection `listener` accepts: counts each stream in `streams`, refuses
/// the streams while that count is below `refuse` (`REFUSED_STREAM`), reads the others' bodies,
/// counts them in `processed` and answers 201.
async fn serve_h2(
    listener: tokio::net::TcpListener,
    streams: Arc<AtomicUsize>,
    processed: Arc<AtomicUsize>,
    refuse: usize,
) {
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            return;
        };
        let (s, p) = (streams.clone(), processed.clone());
        tokio::spawn(async move {
            let Ok(mut conn) = h2::server::handshake(socket).await else {
                return;
            };
            while let Some(Ok((request, mut respond))) = conn.accept().await {
                if s.fetch_add(1, Ordering::SeqCst) < refuse {
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                    continue;
                }
                let mut body = request.into_body();
                while let Some(chunk) = body.data().await {
                    let chunk = chunk.unwrap();
                    let _ = body.flow_control().release_capacity(chunk.len());
                }
                p.fetch_add(1, Ordering::SeqCst);
                let response = hyper::Response::builder().status(201).body(()).unwrap();
                let _ = respond.send_response(response, true);
            }
        });
    }
}

async fn refusing(refuse: usize) -> Refusing {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/orders", listener.local_addr().unwrap());
    let streams = Arc::new(AtomicUsize::new(0));
    let processed = Arc::new(AtomicUsize::new(0));
    let (s, p) = (streams.clone(), processed.clone());
    tokio::spawn(serve_h2(listener, s, p, refuse));
    Refusing {
        url,
        streams,
        processed,
    }
}

/// An unkeyed POST: never resent by the policy after it may have reached the server.
#[resilient(timeout = "2s", deadline = "5s", retry_on = [connect], budget = false)]
async fn create_order(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.post(url)
        .body("amount=100")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[tokio::test]
async fn a_refused_stream_is_sent_again_by_a_client_of_the_settings() {
    let server = refusing(1).await;
    let c = ClientSettings::DEFAULT
        .builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    assert_eq!(create_order(&c, &server.url).await.unwrap(), 201);
    assert_eq!(server.streams.load(Ordering::SeqCst), 2);
    assert_eq!(server.processed.load(Ordering::SeqCst), 1, "processed once");
}

/// With reqwest's retries switched off, the refusal reaches the policy: the server's word
/// that it never processed the stream, a request never sent, which the policy sends again
/// (an unkeyed POST too, under `retry_on = [connect]`); processed once. It was once read as a
/// reset, and the POST failed.
#[tokio::test]
async fn without_reqwests_retry_the_policy_resends_a_refused_stream() {
    let server = refusing(1).await;
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .retry(reqwest::retry::never())
        .build()
        .unwrap();
    let (res, report) = resilience_runtime::measure(create_order(&c, &server.url)).await;
    assert_eq!(res.unwrap(), 201);
    assert_eq!(report.expect("a report").attempts, 2);
    assert_eq!(server.streams.load(Ordering::SeqCst), 2);
    assert_eq!(server.processed.load(Ordering::SeqCst), 1, "processed once");
}

/// "At most two, inside the attempt": a server refusing every stream gets the request three
/// times from reqwest (the first and its two retries), all inside one attempt; the refusal
/// then reaches the policy as a request never sent, retried as a connect failure is, each
/// attempt's stream refused three times; none ever processed.
#[tokio::test]
async fn reqwests_own_retries_stop_at_two_inside_each_attempt() {
    let server = refusing(usize::MAX).await;
    let c = ClientSettings::DEFAULT
        .builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let e = create_order(&c, &server.url).await.unwrap_err();
    assert_eq!(e.class(), Some(resilience_runtime::Class::Connect), "{e}");
    assert_eq!(e.attempts(), 3, "{e}");
    assert_eq!(server.streams.load(Ordering::SeqCst), 9, "{e}");
    assert_eq!(server.processed.load(Ordering::SeqCst), 0);
}

/// An h2c server whose first connection, once the client's HEADERS arrive, says a graceful
/// `GOAWAY` (`NO_ERROR`) with last stream id 0: "I processed none of your streams, go
/// elsewhere" (a server draining for a deploy). Written as raw frames, since a server built
/// on `h2` has accepted the stream by then. Every later connection is served by `h2`,
/// answering 201 and counting the bodies it processed.
async fn draining_first() -> Refusing {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/orders", listener.local_addr().unwrap());
    let streams = Arc::new(AtomicUsize::new(0));
    let processed = Arc::new(AtomicUsize::new(0));
    let (s, p) = (streams.clone(), processed.clone());
    tokio::spawn(async move {
        let Ok((mut socket, _)) = listener.accept().await else {
            return;
        };
        // The client's preface, then its frames until a HEADERS (type 1).
        let mut preface = [0u8; 24];
        if socket.read_exact(&mut preface).await.is_err() {
            return;
        }
        // The server's preface: an empty SETTINGS.
        let _ = socket.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await;
        loop {
            let mut head = [0u8; 9];
            if socket.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            if socket.read_exact(&mut payload).await.is_err() {
                return;
            }
            if head[3] == 1 {
                s.fetch_add(1, Ordering::SeqCst);
                break;
            }
        }
        // GOAWAY: last stream id 0, NO_ERROR.
        let goaway = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let _ = socket.write_all(&goaway).await;
        let _ = socket.flush().await;
        // Read what else comes until the client closes.
        let mut rest = [0u8; 1024];
        while matches!(socket.read(&mut rest).await, Ok(n) if n > 0) {}
        drop(socket);
        serve_h2(listener, s, p, 0).await;
    });
    Refusing {
        url,
        streams,
        processed,
    }
}

/// "… a graceful `GOAWAY`": the stream the draining server never processed is sent again by
/// a client of the settings, on a new connection, inside the one attempt; processed once.
#[tokio::test]
async fn a_stream_a_draining_server_never_processed_is_sent_again_on_a_new_connection() {
    let server = draining_first().await;
    let c = ClientSettings::DEFAULT
        .builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    assert_eq!(create_order(&c, &server.url).await.unwrap(), 201);
    assert_eq!(server.streams.load(Ordering::SeqCst), 2);
    assert_eq!(server.processed.load(Ordering::SeqCst), 1, "processed once");
}

/// With reqwest's retries off, the graceful `GOAWAY` reaches the policy: the stream was past
/// the last one the server processed, never processed, and the policy sends the POST again on
/// a new connection; processed once (it once ended the call, read as a reset).
#[tokio::test]
async fn without_reqwests_retry_the_draining_servers_refusal_is_retried_by_the_policy() {
    let server = draining_first().await;
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .retry(reqwest::retry::never())
        .build()
        .unwrap();
    assert_eq!(create_order(&c, &server.url).await.unwrap(), 201);
    assert_eq!(server.streams.load(Ordering::SeqCst), 2);
    assert_eq!(server.processed.load(Ordering::SeqCst), 1, "processed once");
}

/// "At most two per hop": an h2c server that answers `/orders` with a 307 to `/next` and
/// refuses every stream for `/next`. The redirect's target is a hop of its own: reqwest sends
/// it three times (the first and its two retries), never more, and the POST to `/orders` once;
/// all inside the one attempt, after which an unkeyed POST is not sent again.
#[tokio::test]
async fn reqwests_own_retries_stop_at_two_per_redirect_hop() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/orders", listener.local_addr().unwrap());
    let first = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let (f, n) = (first.clone(), next.clone());
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let (f, n) = (f.clone(), n.clone());
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else {
                    return;
                };
                while let Some(Ok((request, mut respond))) = conn.accept().await {
                    if request.uri().path() == "/next" {
                        n.fetch_add(1, Ordering::SeqCst);
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    f.fetch_add(1, Ordering::SeqCst);
                    let response = hyper::Response::builder()
                        .status(307)
                        .header("location", "/next")
                        .body(())
                        .unwrap();
                    let _ = respond.send_response(response, true);
                }
            });
        }
    });
    let c = ClientSettings::DEFAULT
        .builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let e = create_order(&c, &url).await.unwrap_err();
    assert_eq!(e.attempts(), 1, "{e}");
    assert_eq!(first.load(Ordering::SeqCst), 1, "{e}");
    assert_eq!(next.load(Ordering::SeqCst), 3, "{e}");
}

#[resilient(timeout = "2s", deadline = "5s", retry_on = [connect], budget = false)]
async fn create_order_through_middleware(
    c: &reqwest_middleware::ClientWithMiddleware,
    url: &str,
) -> Result<u16, reqwest_middleware::Error> {
    Ok(c.post(url)
        .body("amount=100")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// Through a middleware stack the refusal is not taken for a request never sent (the README's
/// rule: it may be a middleware's own resend's): the unkeyed POST is not sent again, the safe
/// side of a retry lost.
#[tokio::test]
async fn through_middleware_a_refused_stream_is_not_retried() {
    let server = refusing(1).await;
    let inner = reqwest::Client::builder()
        .http2_prior_knowledge()
        .retry(reqwest::retry::never())
        .build()
        .unwrap();
    let c = reqwest_middleware::ClientBuilder::new(inner).build();
    let (res, report) =
        resilience_runtime::measure(create_order_through_middleware(&c, &server.url)).await;
    assert!(res.is_err(), "{res:?}");
    assert_eq!(report.expect("a report").attempts, 1);
    assert_eq!(server.streams.load(Ordering::SeqCst), 1);
    assert_eq!(server.processed.load(Ordering::SeqCst), 0);
}

/// An h2c server that answers every stream 200 with a `Content-Length` of 1000, sends 10 bytes
/// of it, then resets the stream with `reason`: an answer cut short after its headers.
async fn cutting_answers_short(reason: h2::Reason) -> Refusing {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/orders", listener.local_addr().unwrap());
    let streams = Arc::new(AtomicUsize::new(0));
    let processed = Arc::new(AtomicUsize::new(0));
    let (s, p) = (streams.clone(), processed.clone());
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let (s, p) = (s.clone(), p.clone());
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else {
                    return;
                };
                // Each stream answered in a task of its own: the connection, polled here,
                // sends the headers and the first bytes while the task waits to reset.
                while let Some(Ok((request, mut respond))) = conn.accept().await {
                    s.fetch_add(1, Ordering::SeqCst);
                    let p = p.clone();
                    tokio::spawn(async move {
                        let mut body = request.into_body();
                        while let Some(chunk) = body.data().await {
                            let chunk = chunk.unwrap();
                            let _ = body.flow_control().release_capacity(chunk.len());
                        }
                        p.fetch_add(1, Ordering::SeqCst);
                        let response = hyper::Response::builder()
                            .status(200)
                            .header("content-length", "1000")
                            .body(())
                            .unwrap();
                        let Ok(mut send) = respond.send_response(response, false) else {
                            return;
                        };
                        let _ =
                            send.send_data(hyper::body::Bytes::from_static(b"0123456789"), false);
                        // The headers and the first bytes reach the client before the reset.
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        send.send_reset(reason);
                    });
                }
            });
        }
    });
    Refusing {
        url,
        streams,
        processed,
    }
}

fn h2c() -> reqwest::Client {
    ClientSettings::DEFAULT
        .builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

#[resilient(
    timeout = "2s",
    deadline = "5s",
    max_attempts = 3,
    backoff(initial = "1ms", max = "1ms"),
    budget = false
)]
async fn read_order(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.text().await?)
}

/// An unkeyed POST whose answer's body is read.
#[resilient(timeout = "2s", deadline = "5s", retry_on = [connect], budget = false)]
async fn create_order_read_back(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.post(url).body("amount=100").send().await?.text().await?)
}

/// An answer's body cut short by a stream reset over HTTP/2 is a reset, as over HTTP/1: a GET
/// is sent again (3 of 3), and the class says so. It was once permanent (the stream's error,
/// which has no `source()`, said nothing the classification read), not retried, and not
/// counted by a breaker.
#[tokio::test]
async fn an_answer_cut_short_by_a_stream_reset_is_a_reset() {
    let server = cutting_answers_short(h2::Reason::INTERNAL_ERROR).await;
    let e = read_order(&h2c(), &server.url).await.unwrap_err();
    assert_eq!(e.class(), Some(resilience_runtime::Class::Reset), "{e}");
    assert_eq!(e.attempts(), 3, "{e}");
    assert_eq!(server.streams.load(Ordering::SeqCst), 3, "{e}");
}

/// A `REFUSED_STREAM` after the answer's headers is no word that the request was never
/// processed (it was answered): an unkeyed POST retried on `connect` only is not sent again.
#[tokio::test]
async fn a_stream_refused_after_its_answer_began_is_not_a_request_never_sent() {
    let server = cutting_answers_short(h2::Reason::REFUSED_STREAM).await;
    let e = create_order_read_back(&h2c(), &server.url)
        .await
        .unwrap_err();
    assert_eq!(e.attempts(), 1, "{e}");
    assert_eq!(
        server.processed.load(Ordering::SeqCst),
        1,
        "processed once: {e}"
    );
    assert_ne!(e.class(), Some(resilience_runtime::Class::Connect), "{e}");
}

/// The service's own error, transparent over reqwest's: its `source()` is reqwest's own cause,
/// so the walk of the chain never meets the `reqwest::Error`.
#[derive(Debug, thiserror::Error)]
enum OrderError {
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    #[error(transparent)]
    Runtime(#[from] Error),
}

#[resilient(timeout = "2s", deadline = "5s", retry_on = [connect], budget = false)]
async fn create_order_in_own_error(c: &reqwest::Client, url: &str) -> Result<u16, OrderError> {
    Ok(c.post(url)
        .body("amount=100")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A refused stream reaching the policy inside the service's own transparent error type is
/// still a request never sent (the stream's error, met without the reqwest error above it,
/// says so itself): the POST goes again, processed once.
#[tokio::test]
async fn a_refused_stream_in_a_transparent_error_is_still_never_sent() {
    let server = refusing(1).await;
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .retry(reqwest::retry::never())
        .build()
        .unwrap();
    assert_eq!(
        create_order_in_own_error(&c, &server.url).await.unwrap(),
        201
    );
    assert_eq!(server.streams.load(Ordering::SeqCst), 2);
    assert_eq!(server.processed.load(Ordering::SeqCst), 1, "processed once");
}

#[resilient(timeout = "2s", deadline = "5s", retry_on = [connect], budget = false, method = GET)]
async fn read_order_in_own_error(c: &reqwest::Client, url: &str) -> Result<String, OrderError> {
    Ok(c.get(url).send().await?.text().await?)
}

/// A `REFUSED_STREAM` after the answer's headers, read through the service's transparent
/// error type (the walk meets hyper's body error, then h2's, never reqwest's): the answer
/// began, so no request-never-sent; a read retried on `connect` only is not sent again.
#[tokio::test]
async fn a_stream_refused_after_its_answer_began_in_a_transparent_error_is_not_never_sent() {
    let server = cutting_answers_short(h2::Reason::REFUSED_STREAM).await;
    let e = read_order_in_own_error(&h2c(), &server.url)
        .await
        .unwrap_err();
    assert_eq!(server.streams.load(Ordering::SeqCst), 1, "{e}");
}
