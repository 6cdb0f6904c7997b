//! Hand-written bytes on a raw socket: framing, pipelining and bad input.

use std::time::Duration;

use resilience_fault_server::{Action, FaultServer, Script};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `bytes` and reads until the server closes (bounded by a timeout).
async fn exchange_until_close(server: &FaultServer, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("the server should close the connection");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn bad_input_gets_an_error_status_and_a_close() {
    let server = FaultServer::start(Script::default()).await;
    let long_header = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(70 * 1024));
    let cases: [(&[u8], &str); 6] = [
        (b"garbage\r\n\r\n", "HTTP/1.1 400 "),
        (
            b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            "HTTP/1.1 400 ",
        ),
        (b"GET / HTTP/1.1\r\n\xff\xfe: \x00\r\n\r\n", "HTTP/1.1 400 "),
        (b"GET / HTTP/3\r\n\r\n", "HTTP/1.1 505 "),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            "HTTP/1.1 411 ",
        ),
        (long_header.as_bytes(), "HTTP/1.1 431 "),
    ];
    for (bytes, expected) in cases {
        let answer = exchange_until_close(&server, bytes).await;
        assert!(answer.starts_with(expected), "{bytes:?} -> {answer:?}");
    }
    // Truncated input, then the client's FIN: the server just closes.
    for truncated in [
        &b"GET / HT"[..],
        b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",
    ] {
        let mut stream = TcpStream::connect(server.addr()).await.unwrap();
        stream.write_all(truncated).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .expect("the server should close the connection")
            .unwrap();
        assert!(answer.is_empty(), "{answer:?}");
    }

    assert_eq!(server.count(), 0, "bad requests are not recorded");
    let answer =
        exchange_until_close(&server, b"GET /fine HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer:?}");
    assert!(answer.ends_with("\r\n\r\nok"), "{answer:?}");
    assert_eq!(server.count_path("/fine"), 1);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let server = FaultServer::start(Script::dynamic(|seen| {
        Action::ok().body(format!(
            "{}{}",
            seen.path,
            String::from_utf8_lossy(&seen.body)
        ))
    }))
    .await;
    let answer = exchange_until_close(
        &server,
        b"POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\n!!GET /b HTTP/1.1\r\n\r\nHEAD /c HTTP/1.0\r\n\r\n",
    )
    .await;
    assert_eq!(
        answer,
        "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n/a!!\
         HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n/b\
         HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
    );
    let connections: Vec<u64> = server.requests().iter().map(|s| s.connection).collect();
    assert_eq!(connections, [0, 0, 0]);
}

#[tokio::test]
async fn reply_connection_close_ends_the_connection() {
    let server = FaultServer::start(vec![Action::ok().header("Connection", "close")]).await;
    let answer =
        exchange_until_close(&server, b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(
        answer,
        "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    );
    assert_eq!(server.count(), 1);
}

#[tokio::test]
async fn stall_lets_go_when_the_client_leaves() {
    let server = FaultServer::start(vec![Action::stall()]).await;
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut byte = [0u8; 1];
    let waited = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut byte)).await;
    assert!(waited.is_err(), "a stall never answers");
    drop(stream);
    // The stalled task has ended; a new connection is served normally.
    let answer =
        exchange_until_close(&server, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(answer.ends_with("ok"), "{answer:?}");
}
