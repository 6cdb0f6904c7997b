//! A hyper HTTP/1.1 server on 127.0.0.1, on its own thread and its own runtime, with a
//! deterministic fault schedule: response `i` (counted from the last [`Server::reset`]) is a
//! `503` with `Retry-After: 0` when `i % fail_every == fail_every - 1`, else `200 ok`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};

/// The server's handle; the thread lives as long as the process.
#[derive(Debug, Clone)]
pub struct Server {
    pub addr: SocketAddr,
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    served: AtomicU64,
    fail_every: AtomicU64,
}

impl Server {
    /// Binds `127.0.0.1:0` and serves on a new thread.
    pub fn start() -> Server {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        std_listener.set_nonblocking(true).expect("non-blocking");
        let addr = std_listener.local_addr().expect("local address");
        let state = Arc::new(State {
            served: AtomicU64::new(0),
            fail_every: AtomicU64::new(0),
        });
        let st = state.clone();
        std::thread::Builder::new()
            .name("bench-server".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("server runtime");
                rt.block_on(serve(std_listener, st));
            })
            .expect("server thread");
        Server { addr, state }
    }

    /// `http://127.0.0.1:<port>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// Restarts the schedule: from now on every `fail_every`-th response is a 503 (0: none,
    /// 1: all of them).
    pub fn reset(&self, fail_every: u64) {
        self.state.fail_every.store(fail_every, Ordering::SeqCst);
        self.state.served.store(0, Ordering::SeqCst);
    }

    /// Requests answered since the last reset.
    pub fn served(&self) -> u64 {
        self.state.served.load(Ordering::SeqCst)
    }
}

async fn serve(listener: std::net::TcpListener, state: Arc<State>) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(req, state.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    _req: Request<hyper::body::Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let i = state.served.fetch_add(1, Ordering::SeqCst);
    let every = state.fail_every.load(Ordering::SeqCst);
    let response = if every != 0 && i % every == every - 1 {
        Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header("retry-after", "0")
            .body(Full::new(Bytes::new()))
    } else {
        Response::builder().body(Full::new(Bytes::from_static(b"ok")))
    };
    Ok(response.expect("a valid response"))
}
