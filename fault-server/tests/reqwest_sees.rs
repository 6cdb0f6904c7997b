//! What a reqwest client sees for each fault, over real loopback sockets.

use std::error::Error as _;
use std::io;
use std::time::{Duration, SystemTime};

use resilience_fault_server::{Action, Blackhole, FaultServer, Script, refused_addr};

/// Every client has an overall timeout, so no test can hang.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// The first `io::Error` kind in the source chain.
fn io_kind(err: &reqwest::Error) -> Option<io::ErrorKind> {
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(io.kind());
        }
        source = e.source();
    }
    None
}

/// The first `hyper::Error` in the source chain.
fn hyper_error(err: &reqwest::Error) -> Option<&hyper::Error> {
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(hyper) = e.downcast_ref::<hyper::Error>() {
            return Some(hyper);
        }
        source = e.source();
    }
    None
}

#[tokio::test]
async fn reset_after_reading_is_connection_reset() {
    let server = FaultServer::start(vec![Action::reset()]).await;
    let err = client()
        .post(server.url("/pay"))
        .body("card=1")
        .send()
        .await
        .unwrap_err();
    assert!(err.is_request(), "{err:?}");
    assert_eq!(
        io_kind(&err),
        Some(io::ErrorKind::ConnectionReset),
        "{err:?}"
    );
    assert_eq!(server.count(), 1, "the server read the request");
    assert_eq!(server.requests()[0].body, b"card=1");
    assert_eq!(server.effects(), 0);
}

#[tokio::test]
async fn close_before_answering_is_an_incomplete_message() {
    let server = FaultServer::start(vec![Action::close()]).await;
    let err = client().get(server.url("/")).send().await.unwrap_err();
    let hyper = hyper_error(&err).unwrap_or_else(|| panic!("no hyper error in {err:?}"));
    assert!(hyper.is_incomplete_message(), "{hyper:?}");
    assert_eq!(server.count(), 1);
}

#[tokio::test]
async fn stall_ends_in_a_client_timeout() {
    let server = FaultServer::start(vec![Action::stall()]).await;
    let started = tokio::time::Instant::now();
    let err = client()
        .get(server.url("/slow"))
        .timeout(Duration::from_millis(200))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(!err.is_connect(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(server.count_path("/slow"), 1);
}

#[tokio::test]
async fn refused_address_is_a_connect_error() {
    let url = format!("http://{}/", refused_addr());
    let err = client().get(url).send().await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    assert_eq!(
        io_kind(&err),
        Some(io::ErrorKind::ConnectionRefused),
        "{err:?}"
    );
}

#[tokio::test]
async fn blackhole_ends_in_a_connect_timeout() {
    let hole = Blackhole::new();
    let client = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_millis(100))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let err = client.get(hole.url("/")).send().await.unwrap_err();
    let took = started.elapsed();
    assert!(err.is_connect() && err.is_timeout(), "{err:?}");
    assert!(took >= Duration::from_millis(90), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[tokio::test]
async fn unavailable_with_retry_after_is_a_response() {
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    let server = FaultServer::start(vec![
        Action::unavailable(2),
        Action::status(503).retry_after_date(when).body("busy"),
    ])
    .await;
    let client = client();

    let first = client.get(server.url("/")).send().await.unwrap();
    assert_eq!(first.status(), 503);
    assert_eq!(first.headers()["retry-after"], "2");

    let second = client.get(server.url("/")).send().await.unwrap();
    assert_eq!(second.status(), 503);
    let date = second.headers()["retry-after"].to_str().unwrap().to_owned();
    assert_eq!(date, "Wed, 18 May 2033 03:33:20 GMT");
    assert_eq!(second.text().await.unwrap(), "busy");
    assert_eq!(server.effects(), 0, "a 503 is not done");
}

#[tokio::test]
async fn keep_alive_reuses_one_connection() {
    let server = FaultServer::start(Script::default()).await;
    let client = client();
    for _ in 0..3 {
        let response = client.get(server.url("/")).send().await.unwrap();
        assert_eq!(response.text().await.unwrap(), "ok");
    }
    let connections: Vec<u64> = server.requests().iter().map(|s| s.connection).collect();
    assert_eq!(connections, [0, 0, 0]);
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn idle_timeout_closes_pooled_connections() {
    let server =
        FaultServer::start(Script::default().idle_timeout(Duration::from_millis(100))).await;
    let client = client();
    client.get(server.url("/a")).send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The pool notices the FIN while idle and dials again.
    client.get(server.url("/b")).send().await.unwrap();
    let connections: Vec<u64> = server.requests().iter().map(|s| s.connection).collect();
    assert_eq!(connections, [0, 1]);
}

#[tokio::test]
async fn processed_then_reset_counts_the_effect() {
    let server = FaultServer::start(vec![Action::reset().after_processing()]).await;
    let err = client().post(server.url("/pay")).send().await.unwrap_err();
    assert_eq!(
        io_kind(&err),
        Some(io::ErrorKind::ConnectionReset),
        "{err:?}"
    );
    assert_eq!(server.count(), 1);
    assert_eq!(server.effects(), 1, "the card was charged, the answer lost");
    let seen = &server.requests()[0];
    assert!(seen.effect_applied());
}

#[tokio::test]
async fn processed_then_close_or_503_counts_the_effect() {
    let server = FaultServer::start(vec![
        Action::close().after_processing(),
        Action::status(503).after_processing(),
        Action::status(500),
    ])
    .await;
    let client = client();
    let err = client.post(server.url("/")).send().await.unwrap_err();
    assert!(
        hyper_error(&err).is_some_and(|h| h.is_incomplete_message()),
        "{err:?}"
    );
    assert_eq!(
        client.post(server.url("/")).send().await.unwrap().status(),
        503
    );
    assert_eq!(
        client.post(server.url("/")).send().await.unwrap().status(),
        500
    );
    let applied: Vec<bool> = server
        .requests()
        .iter()
        .map(|s| s.effect_applied())
        .collect();
    assert_eq!(applied, [true, true, false]);
}

#[tokio::test(start_paused = true)]
async fn paused_clock_delay_takes_no_wall_time() {
    let server = FaultServer::start(vec![
        Action::ok().body("late").after(Duration::from_secs(10)),
    ])
    .await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let wall = std::time::Instant::now();
    let virtual_start = tokio::time::Instant::now();
    let response = client.get(server.url("/")).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "late");
    assert!(virtual_start.elapsed() >= Duration::from_secs(10));
    assert!(
        wall.elapsed() < Duration::from_secs(2),
        "{:?}",
        wall.elapsed()
    );
}

/// The gateway charges the card at 100 ms although the client gave up at 50 ms; the retry
/// carries the same key, so a deduplicating gateway charges once.
#[tokio::test(start_paused = true)]
async fn effect_lands_after_the_client_timed_out() {
    let server = FaultServer::start(Action::ok().after(Duration::from_millis(100))).await;
    let client = client();
    let pay = || {
        client
            .post(server.url("/pay"))
            .header("Idempotency-Key", "k-1")
            .timeout(Duration::from_millis(50))
            .send()
    };

    let err = pay().await.unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!((server.count(), server.effects()), (1, 0));
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(server.effects(), 1, "charged although nobody listened");
    let seen = &server.requests()[0];
    let charged_after = seen.effect_at.unwrap() - seen.at;
    assert!(
        charged_after >= Duration::from_millis(100) && charged_after < Duration::from_millis(105),
        "{charged_after:?}"
    );

    assert!(pay().await.unwrap_err().is_timeout());
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(server.effects(), 2);
    assert_eq!(server.distinct_effects("idempotency-key"), 1);
}

#[tokio::test]
async fn dynamic_script_decides_by_path_key_and_count() {
    let server = FaultServer::start(Script::dynamic(|seen| {
        if seen.idempotency_key() == Some("used") {
            Action::status(409)
        } else if seen.path == "/flaky" && seen.index % 2 == 1 {
            Action::unavailable(1)
        } else {
            Action::ok().header("X-Index", seen.index.to_string())
        }
    }))
    .await;
    let client = client();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            client
                .get(server.url("/flaky"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 503, 200, 503]);
    let used = client
        .post(server.url("/pay?amount=5"))
        .header("Idempotency-Key", "used")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(used.status(), 409);
    assert_eq!(server.count_path("/flaky"), 4);
    assert_eq!(server.count_path("/pay"), 1);

    let pay = server.requests().pop().unwrap();
    assert_eq!(pay.index, 4);
    assert_eq!(pay.method, "POST");
    assert_eq!(pay.query.as_deref(), Some("amount=5"));
    assert_eq!(pay.header("IDEMPOTENCY-KEY"), Some("used"));
    assert_eq!(pay.body, b"x");
}

#[tokio::test]
async fn sequence_then_fallback_and_clear() {
    let server =
        FaultServer::start(Script::sequence([Action::status(500)]).then(Action::status(204))).await;
    let client = client();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            client
                .get(server.url("/"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [500, 204, 204]);
    assert_eq!(server.effects(), 2);

    server.clear();
    assert_eq!((server.count(), server.effects()), (0, 0));
    let again = client.get(server.url("/")).send().await.unwrap();
    assert_eq!(again.status(), 500, "the script starts over");
    assert_eq!(server.requests()[0].index, 0);
}

#[tokio::test]
async fn large_bodies_arrive_whole() {
    let server = FaultServer::start(Script::default()).await;
    let body = vec![7u8; 300_000];
    let response = client()
        .put(server.url("/upload"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(server.requests()[0].body, body);
}

#[tokio::test]
async fn shutdown_stops_accepting_and_closes_stalled_connections() {
    let server = FaultServer::start(Action::stall()).await;
    let url = server.url("/");
    let pending = tokio::spawn(client().get(url.clone()).send());
    while server.count() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.shutdown().await;
    let err = pending.await.unwrap().unwrap_err();
    assert!(!err.is_timeout(), "closed, not timed out: {err:?}");
    let err = client().get(url).send().await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    assert_eq!(server.count(), 1, "the recording survives shutdown");
}

#[tokio::test]
async fn drop_stops_accepting() {
    let server = FaultServer::start(Script::default()).await;
    let addr = server.addr();
    drop(server);
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{addr} still accepts after the server was dropped");
}
