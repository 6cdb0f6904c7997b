//! A redis-server child process and a TCP proxy that can leave its connections silent, for the
//! Redis fault tests.
#![allow(dead_code)]

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// A redis-server child process on 127.0.0.1.
pub struct Redis {
    pub child: Option<Child>,
    pub port: u16,
    /// More `redis-server` arguments.
    pub args: &'static [&'static str],
}

impl Redis {
    /// Starts one on a free port; `None` (skip) if redis-server is not installed, unless on CI.
    pub async fn start() -> Option<Redis> {
        Redis::start_with(&[]).await
    }

    /// [`start`](Self::start), with more `redis-server` arguments.
    pub async fn start_with(args: &'static [&'static str]) -> Option<Redis> {
        // While this server is down (killed, to be restarted on the same port), no socket of
        // a test running beside it can be given the port (`free_port`).
        let port = resilience_fault_server::free_port();
        let mut redis = Redis {
            child: None,
            port,
            args,
        };
        if !redis.spawn() {
            if std::env::var_os("CI").is_some() {
                panic!("CI is set but redis-server could not be started; .ci/redis.sh installs it");
            }
            let _ = writeln!(
                std::io::stderr(),
                "skipping: redis-server not found; .ci/redis.sh installs it"
            );
            return None;
        }
        redis.wait_ready().await;
        Some(redis)
    }

    pub fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(child) => {
                self.child = Some(child);
                true
            }
            Err(_) => false,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub async fn wait_ready(&self) {
        for _ in 0..200 {
            if self.ping().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    pub async fn ping(&self) -> bool {
        let ping = async {
            let client = redis::Client::open(self.url())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        matches!(
            tokio::time::timeout(Duration::from_millis(500), ping).await,
            Ok(Ok(_))
        )
    }

    /// Runs `command` on a fresh connection.
    pub async fn run(&self, command: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        let client = redis::Client::open(self.url())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        command.query_async(&mut conn).await
    }

    /// The raw bytes under a Redis key, read on a fresh connection.
    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        let get = async {
            let client = redis::Client::open(self.url())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("GET")
                .arg(key)
                .query_async::<Option<Vec<u8>>>(&mut conn)
                .await
        };
        tokio::time::timeout(Duration::from_secs(1), get)
            .await
            .ok()?
            .ok()?
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill {signal} {pid}");
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.kill();
        assert!(self.spawn(), "restart redis-server");
        self.wait_ready().await;
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // SIGKILL ends a stopped process too; thaw it first all the same, so that a
            // failed assertion never leaves a frozen redis-server behind.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.kill();
    }
}

/// A TCP proxy on 127.0.0.1 in front of `to`: after [`BlackHole::cut`], the connections it had
/// carry nothing more either way and are never closed (a host gone without a reset, as a
/// partition or a power cut leaves them), while new ones are carried as before.
pub struct BlackHole {
    pub port: u16,
    /// Where new connections are carried to ([`BlackHole::point_at`]).
    pub to: Arc<std::sync::atomic::AtomicU16>,
    pub cut_at: Arc<std::sync::atomic::AtomicUsize>,
    /// How many connections it accepted.
    pub made: Arc<std::sync::atomic::AtomicUsize>,
}

impl BlackHole {
    pub async fn start(to: u16) -> BlackHole {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Arc::new(std::sync::atomic::AtomicU16::new(to));
        let target_of_new = target.clone();
        // Connections numbered from 1; those numbered up to `cut_at` carry nothing.
        let cut_at = Arc::new(AtomicUsize::new(0));
        let cut = cut_at.clone();
        let made = Arc::new(AtomicUsize::new(0));
        let count = made.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((client, _)) = listener.accept().await {
                n += 1;
                count.store(n, Ordering::SeqCst);
                let to = target_of_new.load(Ordering::SeqCst);
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (mut from, mut to) in [
                    (
                        Box::new(cr) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                        Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                    ),
                    (Box::new(sr) as _, Box::new(cw) as _),
                ] {
                    let cut = cut.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0; 16 * 1024];
                        loop {
                            let Ok(read) = from.read(&mut buf).await else {
                                return;
                            };
                            if read == 0 {
                                return;
                            }
                            if n <= cut.load(Ordering::SeqCst) {
                                continue;
                            }
                            if to.write_all(&buf[..read]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        BlackHole {
            port,
            to: target,
            cut_at,
            made,
        }
    }

    /// New connections go to `port` from now on (an address moved to a new master); those
    /// made before stay where they were.
    pub fn point_at(&self, port: u16) {
        self.to.store(port, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Every connection made so far carries nothing from now on.
    pub fn cut(&self, made: usize) {
        self.cut_at.store(made, std::sync::atomic::Ordering::SeqCst);
    }
}
