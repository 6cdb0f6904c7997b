//! A server of another project that a test starts on loopback (nginx, haproxy in front of a
//! service; httpbin): its own directory and configuration, a free port, stopped and cleaned up
//! when dropped. Without the program the test is skipped (`start` gives `None`), unless `CI`
//! is set: then it fails. Behind a proxy, [`slow_charges`]: a charge slower than it waits.

use std::ffi::OsString;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use resilience_runtime::server::IdempotencyLayer;

pub struct Process {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Process {
    /// Runs `bin` (looked for in `/usr/sbin` first, which a user's `PATH` may lack) with the
    /// arguments `setup(dir, port)` gives (it writes what else the program needs into `dir`);
    /// waits until it listens on `127.0.0.1:port` (a free port chosen here).
    pub async fn start(bin: &str, setup: impl Fn(&Path, u16) -> Vec<OsString>) -> Option<Process> {
        // A port no test beside this one is given (`free_port`). Two servers choosing one
        // port: the second cannot bind it and exits, and is started again on another.
        for _ in 0..5 {
            let port = resilience_fault_server::free_port();
            let dir = std::env::temp_dir()
                .join(format!("resilience-{bin}-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let args = setup(&dir, port);
            let sbin = Path::new("/usr/sbin").join(bin);
            let program = if sbin.exists() {
                sbin
            } else {
                PathBuf::from(bin)
            };
            let stderr = std::fs::File::create(dir.join("stderr.log")).expect("stderr log");
            let child = Command::new(&program)
                .args(args)
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn();
            let child = match child {
                Ok(child) => child,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    if std::env::var_os("CI").is_some() {
                        panic!(
                            "CI is set but {bin} could not be started ({e}); .ci/test installs it"
                        );
                    }
                    let _ = writeln!(
                        std::io::stderr(),
                        "skipping: {bin} not found ({e}); .ci/test installs it"
                    );
                    return None;
                }
            };
            let mut server = Process { child, dir, port };
            for _ in 0..200 {
                if let Ok(Some(_)) = server.child.try_wait() {
                    break;
                }
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    // Listening, and still running: it was this server that answered.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if let Ok(None) = server.child.try_wait() {
                        return Some(server);
                    }
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            let log = ["stderr.log", "error.log"]
                .iter()
                .filter_map(|f| std::fs::read_to_string(server.dir.join(f)).ok())
                .collect::<Vec<_>>()
                .join("\n");
            if let Ok(None) = server.child.try_wait() {
                panic!("{bin} did not listen on 127.0.0.1:{port}: {log}");
            }
            let _ = writeln!(
                std::io::stderr(),
                "{bin} exited on 127.0.0.1:{port}, starting it again on another port: {log}"
            );
        }
        panic!("{bin} exited five times at its start");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// When each request reached the service, and its `Idempotency-Key` (`None`: no key), in order.
#[allow(dead_code)]
pub type Arrivals = Arc<Mutex<Vec<(Instant, Option<String>)>>>;

/// A slow charge (`POST /charges`, `handler_ms` of work, answering `charge #n` for its n-th
/// run) behind `layer` when there is one, noting every request that reaches the service (the
/// layer's 409s and replays too) and every run of the handler.
#[allow(dead_code)]
pub async fn slow_charges(
    layer: Option<IdempotencyLayer>,
    handler_ms: u64,
) -> (SocketAddr, Arrivals, Arc<AtomicUsize>) {
    let arrivals = Arrivals::default();
    let runs = Arc::new(AtomicUsize::new(0));
    let mut app = Router::new().route(
        "/charges",
        axum::routing::post({
            let runs = runs.clone();
            move || async move {
                let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(handler_ms)).await;
                (StatusCode::CREATED, format!("charge #{n}"))
            }
        }),
    );
    if let Some(layer) = layer {
        app = app.layer(layer);
    }
    let app = app.layer(axum::middleware::map_request({
        let arrivals = arrivals.clone();
        move |req: axum::extract::Request| {
            let key = req
                .headers()
                .get("idempotency-key")
                .map(|v| v.to_str().unwrap_or_default().to_owned());
            arrivals.lock().unwrap().push((Instant::now(), key));
            async move { req }
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, arrivals, runs)
}
