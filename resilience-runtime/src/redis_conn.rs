//! One Redis connection, to a single server or to a Redis Cluster: what the idempotency store
//! and the shared rate limits talk through.
//!
//! Every script either of them runs touches one slot (one key, or a rate limit's two keys with
//! one hash tag), so in a cluster each call goes to the master of that slot and no call can
//! span slots.

use std::sync::OnceLock;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, ErrorKind, FromRedisValue, Pipeline, RedisError, RedisFuture, RedisResult,
    ServerErrorKind, Value,
};

/// A Lua script of keys in one slot (`KEYS`), run by its hash (`EVALSHA`), and by its source
/// (`EVAL`) on a node that does not know it (restarted, or its scripts flushed).
///
/// Not `redis::Script`'s own invocation, which answers `NOSCRIPT` with `SCRIPT LOAD`: a cluster
/// client sends that to every node, replicas included, and it fails unless all of them answer,
/// so one node down or frozen stopped the keys of a healthy master that had restarted. `EVAL`
/// goes where its key does (and caches the script there, as `SCRIPT LOAD` would).
pub(crate) struct KeyScript {
    source: &'static str,
    hash: OnceLock<String>,
}

impl KeyScript {
    pub(crate) const fn new(source: &'static str) -> KeyScript {
        KeyScript {
            source,
            hash: OnceLock::new(),
        }
    }

    /// Runs the script on `key` with the arguments `args` writes (`ARGV`).
    pub(crate) async fn run<T: FromRedisValue>(
        &self,
        conn: &mut impl ConnectionLike,
        key: &str,
        args: impl Fn(&mut Cmd),
    ) -> RedisResult<T> {
        self.run_on(conn, &[key], args).await
    }

    /// Runs the script on `keys` (`KEYS`; in a cluster, all in the first one's slot) with the
    /// arguments `args` writes (`ARGV`).
    pub(crate) async fn run_on<T: FromRedisValue>(
        &self,
        conn: &mut impl ConnectionLike,
        keys: &[&str],
        args: impl Fn(&mut Cmd),
    ) -> RedisResult<T> {
        let call = |how: &str, script: &str| {
            let mut cmd = redis::cmd(how);
            cmd.arg(script).arg(keys.len()).arg(keys);
            args(&mut cmd);
            cmd
        };
        let hash = self
            .hash
            .get_or_init(|| redis::Script::new(self.source).get_hash().to_owned());
        match call("EVALSHA", hash).query_async(conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                call("EVAL", self.source).query_async(conn).await
            }
            answer => answer,
        }
    }
}

/// The sockets of a cluster connection: a node whose host vanished without a reset (powered
/// off, cut off) closes nothing, and a response timeout alone keeps its slots' commands on the
/// dead socket (the client retries on the same connection after a timeout) until the kernel
/// gives up, about fifteen minutes. Keepalive probes find an idle one gone in about 8 s, and
/// `TCP_USER_TIMEOUT` one with commands unacknowledged in 5 s (a frozen node's kernel still
/// acknowledges them): the socket is closed, and the client connects again, learning the
/// slots anew where the node does not come back. Not tested: the tests cannot make a host
/// vanish.
fn cluster_tcp_settings() -> redis::io::tcp::TcpSettings {
    use redis::io::tcp::{TcpSettings, socket2::TcpKeepalive};
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(1));
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    let keepalive = keepalive.with_retries(3);
    let settings = TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive);
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    let settings = settings.set_user_timeout(Duration::from_secs(5));
    settings
}

/// How long [`cluster`] waits for a node to accept a connection.
pub(crate) const CLUSTER_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a command sent through a connection made by [`cluster`] may take in all, its
/// redirections and retries included: a command the caller gave up on is not sent again later.
pub(crate) const CLUSTER_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How a connection to a single Redis reconnects and times its commands, for the idempotency
/// store and the shared rate limits: tries to reconnect 10 to 20 ms apart at first, at most
/// 100 ms apart (a delay of at most 50 ms, which the client's jitter can double; its default
/// waits up to 3.2 s, doubled likewise, and every command waits on the reconnection in
/// progress: a Redis back after an outage was used seconds late, and another instance could
/// claim a key whose claim it had lost meanwhile); no response timeout of the client's own
/// (its default, 500 ms, cut any longer `store_timeout` short, as an error rather than a
/// timeout): the caller bounds each call; 1 s to connect.
pub(crate) fn single_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_min_delay(Duration::from_millis(10))
        .set_max_delay(Duration::from_millis(50))
        .set_number_of_retries(6)
        .set_response_timeout(None)
        .set_connection_timeout(Some(Duration::from_secs(1)))
}

/// A single server (reconnecting by itself), one the runtime connected to (replaced when it
/// stops answering), or a cluster (following its slots by itself).
#[derive(Clone)]
pub(crate) enum RedisConn {
    Single(ConnectionManager),
    Watched(Watched),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Watched(w) => {
                let w = w.clone();
                Box::pin(async move {
                    let mut c = w.issue();
                    let answer = c.req_packed_command(cmd).await;
                    w.answered(answer.as_ref().map_or_else(read_only_error, read_only));
                    answer
                })
            }
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Watched(w) => {
                let w = w.clone();
                Box::pin(async move {
                    let mut c = w.issue();
                    let answer = c.req_packed_commands(cmd, offset, count).await;
                    w.answered(
                        answer
                            .as_ref()
                            .map_or_else(read_only_error, |v| v.iter().any(read_only)),
                    );
                    answer
                })
            }
            RedisConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Watched(w) => w.0.conn.load().get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// How long a connection may leave every command unanswered before a new one is made beside
/// it (see [`Watched`]).
pub(crate) const UNANSWERED_FOR: Duration = Duration::from_secs(2);

/// How long the connection has to answer a PING before it is replaced.
const PING_WITHIN: Duration = Duration::from_secs(1);

/// A connection to a single Redis that is replaced when it has answered nothing for
/// [`UNANSWERED_FOR`] while commands were sent.
///
/// The client reconnects only after an error, and a Redis whose host vanished without a reset
/// (powered off, a network partition, a replacement at the same address) gives none: each
/// command waits on a socket nobody answers until the kernel gives up on it, some fifteen
/// minutes, every keyed POST answered 503 meanwhile. Here, once commands have gone unanswered
/// that long, the connection is asked a PING: answered within [`PING_WITHIN`], it is kept (its
/// commands had only been given up on: a store timeout, a caller gone); else a new connection
/// is made, and used once it is up: the old one's commands end as their callers give up on
/// them. A Redis that is only frozen (its kernel still answers) gets a try every
/// [`UNANSWERED_FOR`] too, each bounded by the connection timeout, and the connection that
/// answers first after it thaws is kept.
///
/// A Redis that answers writes with `READONLY` has become a replica (a failover behind a
/// Sentinel, a virtual address or a DNS name moved to the new master, `REPLICAOF` on the old
/// one): it keeps its connections open and answers every script so, and the client does not
/// reconnect on an answer. A new connection is made at once (at most once per
/// [`READONLY_RETRY`]), which reaches whatever the address names now.
#[derive(Clone)]
pub(crate) struct Watched(std::sync::Arc<WatchedState>);

/// How often a connection answered `READONLY` is replaced at most: the address may still name
/// a replica (not yet moved, or named so by mistake).
const READONLY_RETRY: Duration = Duration::from_secs(1);

/// Whether Redis refused a write because it is a replica: `READONLY` (Redis 7), or a script's
/// error that says so (Redis 6 wraps it in `ERR Error running script …`). The client hands a
/// server's error on as an answer (`Value::ServerError`), made an `Err` later.
fn read_only(answer: &Value) -> bool {
    match answer {
        Value::ServerError(e) => {
            e.kind() == Some(ServerErrorKind::ReadOnly)
                || e.details().is_some_and(|d| d.contains("READONLY"))
        }
        _ => false,
    }
}

/// [`read_only`], of an error the client made of an answer.
fn read_only_error(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
        || matches!(e.kind(), ErrorKind::Server(_)) && e.to_string().contains("READONLY")
}

struct WatchedState {
    conn: arc_swap::ArcSwap<ConnectionManager>,
    client: redis::Client,
    epoch: std::time::Instant,
    /// When the first command sent since the last answer was sent (nanoseconds since
    /// `epoch`, plus one; 0: none waiting).
    unanswered_since: std::sync::atomic::AtomicU64,
    replacing: std::sync::atomic::AtomicBool,
    /// When a connection answered `READONLY` was last replaced (as `unanswered_since`; 0:
    /// never).
    read_only_at: std::sync::atomic::AtomicU64,
}

impl Watched {
    /// Connects to the Redis `client` names, with [`single_config`].
    pub(crate) async fn connect(client: redis::Client) -> RedisResult<Watched> {
        let conn = ConnectionManager::new_with_config(client.clone(), single_config()).await?;
        Ok(Watched(std::sync::Arc::new(WatchedState {
            conn: arc_swap::ArcSwap::from_pointee(conn),
            client,
            epoch: std::time::Instant::now(),
            unanswered_since: std::sync::atomic::AtomicU64::new(0),
            replacing: std::sync::atomic::AtomicBool::new(false),
            read_only_at: std::sync::atomic::AtomicU64::new(0),
        })))
    }

    fn now(&self) -> u64 {
        (self.0.epoch.elapsed().as_nanos() as u64).saturating_add(1)
    }

    /// The connection for a command about to be sent; a new one started when commands have
    /// gone unanswered for [`UNANSWERED_FOR`].
    fn issue(&self) -> ConnectionManager {
        use std::sync::atomic::Ordering;
        let now = self.now();
        let since = match self.0.unanswered_since.compare_exchange(
            0,
            now,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => now,
            Err(since) => since,
        };
        if now.saturating_sub(since) >= UNANSWERED_FOR.as_nanos() as u64
            && !self.0.replacing.swap(true, Ordering::AcqRel)
        {
            // Counted again from now: the next try, if this one fails, is as far away.
            self.0.unanswered_since.store(now, Ordering::Release);
            let state = self.0.clone();
            tokio::spawn(async move {
                // Commands given up on (a store timeout, a caller gone) leave the mark behind
                // on a connection that answers: it is asked first, and kept if it answers.
                let mut current = ConnectionManager::clone(&state.conn.load());
                let ping = redis::cmd("PING");
                // Any answer, an error reply of Redis's too (`-LOADING`, `-BUSY`), is Redis
                // answering; not a failure of the connection (a reply that did not parse).
                let alive = tokio::time::timeout(
                    PING_WITHIN,
                    ping.query_async::<redis::Value>(&mut current),
                )
                .await
                .is_ok_and(|answer| match answer {
                    Ok(_) => true,
                    Err(e) => matches!(e.kind(), ErrorKind::Server(_)),
                });
                if alive {
                    state.unanswered_since.store(0, Ordering::Release);
                } else if state.replace().await {
                    tracing::warn!(
                        "Redis left every command unanswered for {UNANSWERED_FOR:?}, and a PING for {PING_WITHIN:?}: a new connection replaces the old one"
                    );
                }
                state.replacing.store(false, Ordering::Release);
            });
        }
        ConnectionManager::clone(&self.0.conn.load())
    }

    /// A command was answered (a reply or an error): the connection is alive. An answer that
    /// Redis is a replica now replaces it (see [`Watched`]).
    fn answered(&self, read_only: bool) {
        use std::sync::atomic::Ordering;
        self.0.unanswered_since.store(0, Ordering::Release);
        if !read_only {
            return;
        }
        let now = self.now();
        let last = self.0.read_only_at.load(Ordering::Acquire);
        if last != 0 && now.saturating_sub(last) < READONLY_RETRY.as_nanos() as u64
            || self.0.replacing.swap(true, Ordering::AcqRel)
        {
            return;
        }
        self.0.read_only_at.store(now, Ordering::Release);
        let state = self.0.clone();
        tokio::spawn(async move {
            if state.replace().await {
                tracing::warn!(
                    "Redis answered READONLY (a replica now, after a failover?): a new connection replaces the old one"
                );
            }
            state.replacing.store(false, Ordering::Release);
        });
    }
}

impl WatchedState {
    /// Makes a new connection (within [`UNANSWERED_FOR`]) and uses it from now on: `true`
    /// when it did.
    async fn replace(&self) -> bool {
        let made = tokio::time::timeout(
            UNANSWERED_FOR,
            ConnectionManager::new_with_config(self.client.clone(), single_config()),
        )
        .await;
        match made {
            Ok(Ok(conn)) => {
                self.conn.store(std::sync::Arc::new(conn));
                true
            }
            _ => false,
        }
    }
}

/// Connects to the Redis Cluster that `urls` (`redis://host:port/`, one or more of its nodes)
/// belong to, with [`CLUSTER_CONNECT_TIMEOUT`] and [`CLUSTER_RESPONSE_TIMEOUT`].
///
/// An empty list, or an empty URL in it, is an [`ErrorKind::InvalidClientConfig`] error.
pub(crate) async fn cluster<I, S>(urls: I) -> RedisResult<ClusterConnection>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let urls: Vec<String> = urls
        .into_iter()
        .map(|u| u.as_ref().trim().to_owned())
        .collect();
    if urls.is_empty() {
        return Err(RedisError::from((
            ErrorKind::InvalidClientConfig,
            "a Redis Cluster needs the URL of at least one of its nodes; none was given",
        )));
    }
    if let Some(i) = urls.iter().position(String::is_empty) {
        return Err(RedisError::from((
            ErrorKind::InvalidClientConfig,
            "an empty Redis Cluster node URL",
            format!("node {} of {}", i + 1, urls.len()),
        )));
    }
    let client = ClusterClient::builder(urls.iter().map(String::as_str))
        .connection_timeout(CLUSTER_CONNECT_TIMEOUT)
        .response_timeout(CLUSTER_RESPONSE_TIMEOUT)
        .tcp_settings(cluster_tcp_settings())
        .build()?;
    client.get_async_connection().await
}
