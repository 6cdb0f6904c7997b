//! One Redis connection, to a single server or to a Redis Cluster: what the idempotency store
//! and the shared rate limits talk through.
//!
//! Every script either of them runs touches one key (`KEYS[1]`), so in a cluster each call goes
//! to the master of that key's slot and no call can span slots.

use std::sync::OnceLock;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, ErrorKind, FromRedisValue, Pipeline, RedisError, RedisFuture, RedisResult,
    ServerErrorKind, Value,
};

/// A Lua script of one key (`KEYS[1]`), run by its hash (`EVALSHA`), and by its source
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
        let call = |how: &str, script: &str| {
            let mut cmd = redis::cmd(how);
            cmd.arg(script).arg(1).arg(key);
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

/// A single server (reconnecting by itself) or a cluster (following its slots by itself).
#[derive(Clone)]
pub(crate) enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
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
            RedisConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
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
        .build()?;
    client.get_async_connection().await
}
