use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use resilience_runtime::{Error, ErrorKind, RequestBuilderExt as _, resilient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn server(fail_first: usize) -> (String, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let i = n2.fetch_add(1, Ordering::SeqCst);
            let resp = if i < fail_first {
                "HTTP/1.1 503 Service Unavailable\r\nretry-after: 0\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            } else {
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
            };
            let _ = s.write_all(resp.as_bytes()).await;
        }
    });
    (format!("http://{addr}/"), n)
}

#[resilient(
    timeout = "1s",
    deadline = "5s",
    max_attempts = 3,
    backoff(initial = "1ms", max = "2ms")
)]
async fn fetch(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url)
        .resilient()
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[tokio::test]
async fn retries_503_then_succeeds() {
    let (url, n) = server(2).await;
    let c = reqwest::Client::new();
    assert_eq!(fetch(&c, &url).await.unwrap(), "ok");
    assert_eq!(n.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn gives_up_after_max_attempts() {
    let (url, n) = server(10).await;
    let c = reqwest::Client::new();
    let e = fetch(&c, &url).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Call);
    assert_eq!(e.attempts(), 3);
    assert_eq!(e.http_status(), Some(503));
    assert_eq!(n.load(Ordering::SeqCst), 3);
}
