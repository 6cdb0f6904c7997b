//! The server: accept loop, per-connection loop, recording.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::http::{self, Head, MAX_HEAD, Refusal};
use crate::{Action, Script};

/// One request as the server saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Position among all requests since the start (or the last [`FaultServer::clear`]),
    /// 0-based; a fixed [`Script`] gives this request the action at this position.
    pub index: usize,
    /// Which TCP connection carried it (0-based, in accept order; never reused).
    pub connection: u64,
    /// The method, e.g. `POST`.
    pub method: String,
    /// The request target without the query, e.g. `/pay`.
    pub path: String,
    /// The query after `?`, if any.
    pub query: Option<String>,
    /// Headers in arrival order, names as sent, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body (framed by `Content-Length`).
    pub body: Vec<u8>,
    /// When the whole request had been read (`tokio::time`, so it follows a paused clock).
    pub at: Instant,
    /// When its effect was applied, if it was (see [`Action::Respond`], [`Action::Effect`]).
    pub effect_at: Option<Instant>,
}

impl Seen {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `Idempotency-Key` header, if sent.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.header("idempotency-key")
    }

    /// Whether the server applied this request's effect (charged the card, say).
    pub fn effect_applied(&self) -> bool {
        self.effect_at.is_some()
    }
}

/// A scriptable HTTP/1.1 server on `127.0.0.1`, made of tasks on the caller's tokio runtime.
///
/// Every delay uses `tokio::time`, and no thread or runtime of its own is involved, so it
/// works under `#[tokio::test(start_paused = true)]`. Dropping it (or
/// [`FaultServer::shutdown`]) stops accepting and ends every connection task.
pub struct FaultServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Mutex<Option<Stop>>,
}

struct Stop {
    signal: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

struct Shared {
    script: Script,
    log: Mutex<Log>,
    connections: AtomicU64,
}

#[derive(Default)]
struct Log {
    /// Bumped by `clear`, so that late effects of forgotten requests are dropped.
    generation: u64,
    seen: Vec<Seen>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FaultServer {
    /// Binds `127.0.0.1:0` and serves `script` from tasks spawned on the current runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime, or if no loopback port can be bound.
    pub async fn start(script: impl Into<Script>) -> FaultServer {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("fault server: cannot bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("fault server: no local address");
        let shared = Arc::new(Shared {
            script: script.into(),
            log: Mutex::default(),
            connections: AtomicU64::new(0),
        });
        let (signal, stopped) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, shared.clone(), stopped));
        FaultServer {
            addr,
            shared,
            stop: Mutex::new(Some(Stop { signal, task })),
        }
    }

    /// The bound address, `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>` followed by `path` (a missing leading `/` is added).
    pub fn url(&self, path: &str) -> String {
        let slash = if path.starts_with('/') { "" } else { "/" };
        format!("http://{}{slash}{path}", self.addr)
    }

    /// Every request read so far, in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        lock(&self.shared.log).seen.clone()
    }

    /// How many requests were read.
    pub fn count(&self) -> usize {
        lock(&self.shared.log).seen.len()
    }

    /// Waits, in steps of a millisecond (on a paused clock too) and for ten seconds at most,
    /// until at least `n` requests were read; the count then.
    pub async fn wait_for(&self, n: usize) -> usize {
        for _ in 0..10_000 {
            if self.count() >= n {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        self.count()
    }

    /// How many requests were read for this path (query excluded).
    pub fn count_path(&self, path: &str) -> usize {
        let log = lock(&self.shared.log);
        log.seen.iter().filter(|s| s.path == path).count()
    }

    /// How many requests had their effect applied.
    pub fn effects(&self) -> usize {
        let log = lock(&self.shared.log);
        log.seen.iter().filter(|s| s.effect_applied()).count()
    }

    /// How many effects a server that deduplicates by `header` (e.g. `Idempotency-Key`)
    /// would have applied: distinct values among requests whose effect was applied, each
    /// such request without the header counting on its own.
    pub fn distinct_effects(&self, header: &str) -> usize {
        let log = lock(&self.shared.log);
        let mut keys = std::collections::HashSet::new();
        let mut keyless = 0;
        for seen in log.seen.iter().filter(|s| s.effect_applied()) {
            match seen.header(header) {
                Some(key) => {
                    keys.insert(key);
                }
                None => keyless += 1,
            }
        }
        keys.len() + keyless
    }

    /// How many TCP connections were accepted.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Forgets every recorded request and restarts a fixed script from its first action.
    /// Requests still in flight keep their actions but are no longer recorded.
    pub fn clear(&self) {
        let mut log = lock(&self.shared.log);
        log.generation += 1;
        log.seen.clear();
    }

    /// Stops accepting, closes every open connection and waits until that is done.
    /// The recording stays readable.
    pub async fn shutdown(&self) {
        let stop = lock(&self.stop).take();
        if let Some(Stop { signal, task }) = stop {
            let _ = signal.send(());
            let _ = task.await;
        }
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        if let Some(stop) = lock(&self.stop).take() {
            // Aborting the accept task drops its `JoinSet`, which aborts every connection.
            stop.task.abort();
        }
    }
}

impl fmt::Debug for FaultServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultServer")
            .field("addr", &self.addr)
            .field("script", &self.shared.script)
            .field("requests", &self.count())
            .finish()
    }
}

impl Shared {
    fn record(&self, head: Head, body: Vec<u8>, connection: u64) -> (Seen, u64) {
        let mut log = lock(&self.log);
        let seen = Seen {
            index: log.seen.len(),
            connection,
            method: head.method,
            path: head.path,
            query: head.query,
            headers: head.headers,
            body,
            at: Instant::now(),
            effect_at: None,
        };
        log.seen.push(seen.clone());
        (seen, log.generation)
    }

    fn apply_effect(&self, generation: u64, index: usize) {
        let mut log = lock(&self.log);
        if log.generation != generation {
            return;
        }
        if let Some(seen) = log.seen.get_mut(index) {
            seen.effect_at.get_or_insert_with(Instant::now);
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let id = shared.connections.fetch_add(1, Ordering::Relaxed);
                    connections.spawn(serve(stream, id, shared.clone()));
                }
                // Out of descriptors and the like: wait instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

/// Serves requests on one connection until an action or the client ends it.
async fn serve(mut stream: TcpStream, connection: u64, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        let (head, body) = match read_request(&mut stream, &mut buf, &shared.script).await {
            Read::Request(head, body) => (head, body),
            Read::Gone => return,
            Read::Refused(refusal) => {
                let _ = stream.write_all(&refusal.response()).await;
                let _ = stream.shutdown().await;
                return;
            }
        };
        let (close, head_only) = (head.close, head.method == "HEAD");
        let (seen, generation) = shared.record(head, body, connection);
        let exchange = Exchange {
            close,
            head_only,
            generation,
            index: seen.index,
        };
        let action = shared.script.action_for(&seen);
        if !perform(action, &mut stream, &shared, exchange, &seen).await {
            return;
        }
    }
}

enum Read {
    Request(Head, Vec<u8>),
    /// The client went away, or the connection idled out: just close.
    Gone,
    Refused(Refusal),
}

/// Reads one request into `buf`, keeping any bytes after it for the next one.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>, script: &Script) -> Read {
    let head_len = loop {
        if let Some(end) = http::head_end(buf) {
            break end;
        }
        if buf.len() > MAX_HEAD {
            return Read::Refused(Refusal(431));
        }
        let more = match script.idle_timeout {
            Some(idle) if buf.is_empty() => {
                match tokio::time::timeout(idle, read_more(stream, buf)).await {
                    Ok(more) => more,
                    Err(_) => return Read::Gone,
                }
            }
            _ => read_more(stream, buf).await,
        };
        if !more {
            return Read::Gone;
        }
    };
    if head_len > MAX_HEAD {
        return Read::Refused(Refusal(431));
    }
    let head = match http::parse_head(&buf[..head_len]) {
        Ok(head) => head,
        Err(refusal) => return Read::Refused(refusal),
    };
    let total = head_len + head.content_length;
    while buf.len() < total {
        if !read_more(stream, buf).await {
            return Read::Gone;
        }
    }
    let rest = buf.split_off(total);
    let mut request = std::mem::replace(buf, rest);
    let body = request.split_off(head_len);
    Read::Request(head, body)
}

/// Appends what the socket has; false at end of stream or on error.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    buf.reserve(16 * 1024);
    matches!(stream.read_buf(buf).await, Ok(n) if n > 0)
}

#[derive(Clone, Copy)]
struct Exchange {
    /// The client asked to close after this exchange.
    close: bool,
    head_only: bool,
    generation: u64,
    index: usize,
}

/// Carries out an action; true if the connection should serve another request.
async fn perform(
    mut action: Action,
    stream: &mut TcpStream,
    shared: &Shared,
    exchange: Exchange,
    seen: &Seen,
) -> bool {
    let mut forwarded: Option<Vec<u8>> = None;
    loop {
        action = match action {
            Action::Forward(upstream, inner) => {
                forwarded = forward(upstream, seen).await;
                *inner
            }
            Action::ForwardWithin(upstream, limit) => {
                match tokio::time::timeout(limit, forward(upstream, seen)).await {
                    Ok(answer) => {
                        forwarded = answer;
                        Action::Relay
                    }
                    // Dropping the forward closes the upstream connection.
                    Err(_) => Action::status(504).body("upstream timed out"),
                }
            }
            Action::Relay => {
                let bytes = match forwarded.take() {
                    Some(b) => b,
                    None => http::encode(
                        &crate::Reply {
                            status: 502,
                            headers: Vec::new(),
                            body: Vec::new(),
                        },
                        false,
                        true,
                    ),
                };
                // The upstream answer is framed for a closing connection: close after it.
                let _ = stream.write_all(&bytes).await;
                return false;
            }
            Action::Delay(delay, inner) => {
                tokio::time::sleep(delay).await;
                *inner
            }
            Action::Effect(inner) => {
                shared.apply_effect(exchange.generation, exchange.index);
                *inner
            }
            Action::Respond(reply) => {
                if reply.status < 400 {
                    shared.apply_effect(exchange.generation, exchange.index);
                }
                let close = exchange.close || http::reply_closes(&reply);
                let bytes = http::encode(&reply, exchange.head_only, close);
                return stream.write_all(&bytes).await.is_ok() && !close;
            }
            Action::Stall => {
                // Hold the socket, discarding input, until the client goes away.
                let mut sink = Vec::new();
                while read_more(stream, &mut sink).await {
                    sink.clear();
                }
                return false;
            }
            Action::Reset => {
                // Linger 0: closing sends RST instead of FIN.
                let _ = socket2::SockRef::from(&*stream).set_linger(Some(Duration::ZERO));
                return false;
            }
            Action::Close => return false,
            Action::Raw(bytes) => {
                let _ = stream.write_all(&bytes).await;
                return false;
            }
        };
    }
}

/// Sends `seen` to `upstream` on a fresh connection (`Connection: close`) and reads the whole
/// answer; `None` if the upstream could not be reached or answered nothing.
async fn forward(upstream: SocketAddr, seen: &Seen) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(256 + seen.body.len());
    let target = match &seen.query {
        Some(q) => format!("{}?{q}", seen.path),
        None => seen.path.clone(),
    };
    out.extend_from_slice(format!("{} {target} HTTP/1.1\r\n", seen.method).as_bytes());
    for (k, v) in &seen.headers {
        if k.eq_ignore_ascii_case("connection") || k.eq_ignore_ascii_case("content-length") {
            continue;
        }
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            seen.body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&seen.body);
    let mut up = TcpStream::connect(upstream).await.ok()?;
    up.write_all(&out).await.ok()?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer).await.ok()?;
    (!answer.is_empty()).then_some(answer)
}
