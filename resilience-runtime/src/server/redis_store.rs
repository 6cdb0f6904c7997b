//! The shared store: Redis (one server or a cluster), one string key per record, every change a
//! single atomic script on that one key.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use redis::Client;
use redis::Value;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;

use super::record::{InFlight, Record, StoredResponse};
use super::store::{BoxFuture, Claim, IdempotencyStore, StoreError};
use crate::redis_conn::{self, KeyScript, RedisConn};

/// A Redis-backed [`IdempotencyStore`], shared by every instance of a service.
///
/// Each record is one Redis string holding [`Record::encode`] bytes, with a Redis expiry (the
/// lease for a claim, the TTL for a response), so a restarted instance, or any other instance,
/// replays what one of them stored. Every operation is one Lua script, atomic on the server:
/// the claim is "GET, and SET with PX if absent"; completing, renewing and releasing first
/// check that the key still holds the caller's claim, byte for byte.
///
/// The connection reconnects by itself after a failure; commands issued while Redis is down
/// fail, and the layer answers those requests with 503.
///
/// # Redis Cluster
///
/// [`RedisStore::connect_cluster`] takes the URLs of one or more nodes of a cluster. Every
/// script touches one key only, so each call goes to the master of that key's slot and the
/// records of different keys spread over the masters; no hash tag is needed, and none is added
/// (a `prefix` with braces, `{orders}:`, would put every record in one slot; a client's key
/// with braces, `{acct42}-0001`, puts every key of that account in one).
///
/// A master that is gone (its connection refused) fails its keys' calls at once: they get 503,
/// the other masters' keys are served until the cluster marks the master failed
/// (`cluster-node-timeout`); then, under `cluster-require-full-coverage yes` (Redis's
/// default), every node refuses every key until a replica takes the master's slots. A master that does not answer (frozen, overloaded) times
/// its calls out like a single frozen Redis, and after such a timeout the layer takes that
/// master as down for [`store_down_for`] (1 s by default): its keys get 503 at once, the other
/// masters' are served (the store learns which master serves which slots, [`part`]); zero
/// asks the store every time. Redis replicates asynchronously: a failover to a replica may
/// lose the last records the old master took, which is the "store lost its data" edge of the
/// [module documentation](super).
///
/// [`store_down_for`]: super::IdempotencyLayer::store_down_for
/// [`part`]: IdempotencyStore::part
#[derive(Clone)]
pub struct RedisStore {
    conn: RedisConn,
    prefix: String,
    /// In a cluster: each master's slot ranges, as `(first, last, master)`, learned from
    /// `CLUSTER SLOTS` (see [`RedisStore::part`]); empty until learned.
    masters: Option<Arc<Masters>>,
}

/// What a cluster store knows of its masters: each one's slot ranges, `(first, last, master)`,
/// in slot order, and the task that learns them, ended when the last clone of the store goes.
struct Masters {
    ranges: ArcSwap<Vec<(u16, u16, u16)>>,
    task: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Masters {
    fn drop(&mut self) {
        let task = self.task.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = task.take() {
            task.abort();
        }
    }
}

/// Numbers the masters of a `CLUSTER SLOTS` answer (`masters_of`'s), each keeping the number
/// it had (`numbers`, by name): a master added, removed or failed over leaves the others'
/// numbers, so a part the layer took as down stays the master that did not answer. A new one
/// takes the lowest number no master known holds; past [`STORE_PARTS`]` / 2` of them, those
/// no longer in the answer are forgotten first, and one left without a number is
/// `u16::MAX` (its keys go by their slots).
fn number_masters(
    numbers: &mut std::collections::HashMap<String, u16>,
    found: &[(u16, u16, String)],
) -> Vec<(u16, u16, u16)> {
    let most = (super::STORE_PARTS / 2) as u16;
    let mut names: Vec<&str> = found.iter().map(|(_, _, n)| n.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    for name in &names {
        if numbers.contains_key(*name) {
            continue;
        }
        let free = |numbers: &std::collections::HashMap<String, u16>| {
            (0..most).find(|n| !numbers.values().any(|v| v == n))
        };
        let n = free(numbers).or_else(|| {
            numbers.retain(|known, _| names.contains(&known.as_str()));
            free(numbers)
        });
        if let Some(n) = n {
            numbers.insert((*name).to_owned(), n);
        }
    }
    found
        .iter()
        .map(|(first, last, name)| {
            (
                *first,
                *last,
                numbers.get(name).copied().unwrap_or(u16::MAX),
            )
        })
        .collect()
}

/// How often a cluster store asks which master serves which slots.
const MASTERS_EVERY: Duration = Duration::from_secs(5);

/// The masters' slot ranges of a `CLUSTER SLOTS` answer, as `(first, last, master)` in slot
/// order, each master named by its node id (or address); `None` for an answer of another form.
fn masters_of(answer: &Value) -> Option<Vec<(u16, u16, String)>> {
    let Value::Array(ranges) = answer else {
        return None;
    };
    let int = |v: &Value| match v {
        Value::Int(i) => u16::try_from(*i).ok(),
        _ => None,
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    };
    let mut found = Vec::new();
    for range in ranges {
        let Value::Array(fields) = range else {
            return None;
        };
        let (first, last) = (int(fields.first()?)?, int(fields.get(1)?)?);
        let Value::Array(master) = fields.get(2)? else {
            return None;
        };
        // Its id where the answer has one, else its address.
        let name = match master.get(2).and_then(text) {
            Some(id) => id,
            None => format!("{}:{}", text(master.first()?)?, text(master.get(1)?)?),
        };
        found.push((first, last, name));
    }
    // In slot order, for the search of `part`.
    found.sort_unstable_by_key(|&(first, ..)| first);
    Some(found)
}

/// Returns the stored value if there is one; otherwise stores ARGV[1] with expiry ARGV[2] ms.
static CLAIM: KeyScript = KeyScript::new(
    r"local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false",
);

/// If the key holds the claim ARGV[1], sets its expiry to ARGV[2] ms.
static RENEW: KeyScript = KeyScript::new(
    r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0",
);

/// If the key holds the claim ARGV[1] or nothing, stores ARGV[2] with expiry ARGV[3] ms.
static COMPLETE: KeyScript = KeyScript::new(
    r"local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0",
);

/// If the key holds the claim ARGV[1], deletes it.
static RELEASE: KeyScript = KeyScript::new(
    r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0",
);

impl RedisStore {
    /// The default prefix of every Redis key the store writes.
    pub const DEFAULT_PREFIX: &'static str = "idempotency:";

    /// Connects to the Redis at `url` (`redis://host:port/db`), with
    /// [`connection_config`](Self::connection_config).
    ///
    /// A connection that leaves every command unanswered for 2 s (a Redis whose host vanished
    /// without a reset: powered off, cut off by a partition, replaced at the same address) is
    /// replaced by a new one, where the client alone would wait for the kernel to give up on
    /// the socket, some fifteen minutes of 503s. So is one answered `READONLY` (the Redis it
    /// reached became a replica, in a failover that moved its address to the new master: it
    /// keeps the connection open and refuses every write, and the client does not reconnect
    /// on an answer), at once, at most once a second. A connection given to
    /// [`new`](Self::new) is not watched: give its `redis::Client` TCP keepalive and a
    /// `TCP_USER_TIMEOUT` (`redis::io::tcp::TcpSettings`) for the first; nothing replaces it
    /// after a failover.
    pub async fn connect(url: &str) -> Result<RedisStore, StoreError> {
        let client = Client::open(url).map_err(StoreError::new)?;
        let conn = redis_conn::Watched::connect(client)
            .await
            .map_err(StoreError::new)?;
        Ok(RedisStore::over(RedisConn::Watched(conn)))
    }

    /// The settings [`connect`](Self::connect) gives its connection, for one built by hand
    /// (for [`new`](Self::new), or the shared rate limits'
    /// [`use_redis`](crate::ratelimit::use_redis)): it reconnects at most 100 ms apart, so a
    /// Redis back after an outage is used at once (the client's default waits up to 6.4 s
    /// between tries, and every command waits on the try in progress: meanwhile another
    /// instance may claim a key whose claim the store lost), and has no response timeout of
    /// its own (the layer's [`store_timeout`](super::IdempotencyLayer::store_timeout) bounds
    /// each call; the client's default, 500 ms, would cut a longer one short).
    pub fn connection_config() -> redis::aio::ConnectionManagerConfig {
        redis_conn::single_config()
    }

    /// A store over an existing connection (best built with
    /// [`connection_config`](Self::connection_config)).
    pub fn new(conn: ConnectionManager) -> RedisStore {
        RedisStore::over(RedisConn::Single(conn))
    }

    /// Connects to the Redis Cluster that `urls` belong to: the URLs (`redis://host:port/`) of
    /// one or more of its nodes, from which the client learns the others and the slots.
    ///
    /// Each node gets 1 s to accept a connection, and each command 1 s in all, its
    /// redirections and retries included (the layer's own [`store_timeout`], 250 ms by
    /// default, answers first). For other settings, build the connection with
    /// [`redis::cluster::ClusterClient`] and pass it to [`RedisStore::new_cluster`].
    ///
    /// An empty list, or an empty URL in it, is an error
    /// ([`redis::ErrorKind::InvalidClientConfig`], the [source](std::error::Error::source) of
    /// the [`StoreError`]), as is a cluster none of whose nodes answers.
    ///
    /// [`store_timeout`]: super::IdempotencyLayer::store_timeout
    pub async fn connect_cluster<I, S>(urls: I) -> Result<RedisStore, StoreError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let conn = redis_conn::cluster(urls).await.map_err(StoreError::new)?;
        Ok(RedisStore::new_cluster(conn))
    }

    /// A store over an existing Redis Cluster connection.
    ///
    /// Called in a tokio runtime, it asks the cluster which master serves which slots now and
    /// every 5 s after (from a task that ends with the store), so that a master that leaves a
    /// claim unanswered is taken as down for its own keys only ([`IdempotencyStore::part`]).
    pub fn new_cluster(conn: ClusterConnection) -> RedisStore {
        let mut store = RedisStore::over(RedisConn::Cluster(conn.clone()));
        let masters = Arc::new(Masters {
            ranges: ArcSwap::from_pointee(Vec::new()),
            task: std::sync::Mutex::new(None),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            let task = tokio::spawn(RedisStore::learn_masters(conn, Arc::downgrade(&masters)));
            *masters.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.abort_handle());
        }
        store.masters = Some(masters);
        store
    }

    /// Asks the cluster which master serves which slots, every [`MASTERS_EVERY`] (a second
    /// after each unanswered ask until it first answers), until the store is dropped. An answer that does not come
    /// within a second (the node asked is frozen) leaves what was learned before.
    async fn learn_masters(mut conn: ClusterConnection, masters: std::sync::Weak<Masters>) {
        let mut numbers = std::collections::HashMap::new();
        let mut learned = false;
        loop {
            let answer = tokio::time::timeout(
                Duration::from_secs(1),
                redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query_async::<Value>(&mut conn),
            )
            .await;
            let Some(into) = masters.upgrade() else {
                return;
            };
            if let Ok(Ok(answer)) = answer
                && let Some(found) = masters_of(&answer)
            {
                into.ranges
                    .store(Arc::new(number_masters(&mut numbers, &found)));
                learned = true;
            }
            drop(into);
            tokio::time::sleep(if learned {
                MASTERS_EVERY
            } else {
                Duration::from_secs(1)
            })
            .await;
        }
    }

    fn over(conn: RedisConn) -> RedisStore {
        RedisStore {
            conn,
            prefix: RedisStore::DEFAULT_PREFIX.to_owned(),
            masters: None,
        }
    }

    /// Prefixes every Redis key with `prefix` instead of `idempotency:`: give each service
    /// sharing one Redis its own, or a key one forwards to another (same method and path)
    /// meets its own claim there.
    pub fn prefix(mut self, prefix: impl Into<String>) -> RedisStore {
        self.prefix = prefix.into();
        self
    }

    /// The Redis Cluster slot of the Redis key `key` (its hash tag's, if it has one: the
    /// text between the first `{` and the next `}`, when not empty), as Redis computes it.
    fn slot(key: &[u8]) -> u16 {
        let tagged = key
            .iter()
            .position(|&b| b == b'{')
            .and_then(|open| {
                let rest = &key[open + 1..];
                rest.iter()
                    .position(|&b| b == b'}')
                    .filter(|&close| close > 0)
                    .map(|close| &rest[..close])
            })
            .unwrap_or(key);
        crc16::State::<crc16::XMODEM>::calculate(tagged) % 16384
    }

    fn redis_key(&self, key: &str) -> String {
        let mut out = String::with_capacity(self.prefix.len() + key.len());
        out.push_str(&self.prefix);
        out.push_str(key);
        out
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.min(super::FOREVER).as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn decode(bytes: &[u8]) -> Result<Record, StoreError> {
    Record::decode(bytes).map_err(StoreError::new)
}

impl IdempotencyStore for RedisStore {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        claim: &'a InFlight,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        Box::pin(async move {
            let existing: Option<Vec<u8>> = CLAIM
                .run(&mut self.conn.clone(), &self.redis_key(key), |c| {
                    c.arg(Record::InFlight(*claim).encode()).arg(millis(lease));
                })
                .await
                .map_err(StoreError::new)?;
            match existing {
                None => Ok(Claim::Acquired),
                Some(bytes) => Ok(Claim::Existing(decode(&bytes)?)),
            }
        })
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        claim: &'a InFlight,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            RENEW
                .run::<i64>(&mut self.conn.clone(), &self.redis_key(key), |c| {
                    c.arg(Record::InFlight(*claim).encode()).arg(millis(lease));
                })
                .await
                .map(|n| n == 1)
                .map_err(StoreError::new)
        })
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        claim: &'a InFlight,
        response: &'a StoredResponse,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let record = Record::Completed(response.clone()).encode();
            COMPLETE
                .run::<i64>(&mut self.conn.clone(), &self.redis_key(key), |c| {
                    c.arg(Record::InFlight(*claim).encode())
                        .arg(&record)
                        .arg(millis(ttl));
                })
                .await
                .map(|n| n == 1)
                .map_err(StoreError::new)
        })
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        claim: &'a InFlight,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            RELEASE
                .run::<i64>(&mut self.conn.clone(), &self.redis_key(key), |c| {
                    c.arg(Record::InFlight(*claim).encode());
                })
                .await
                .map(|n| n == 1)
                .map_err(StoreError::new)
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Record>, StoreError>> {
        Box::pin(async move {
            let bytes: Option<Vec<u8>> = redis::cmd("GET")
                .arg(self.redis_key(key))
                .query_async(&mut self.conn.clone())
                .await
                .map_err(StoreError::new)?;
            bytes.as_deref().map(decode).transpose()
        })
    }

    /// In a cluster, the master that serves the key's slot (the first 64 parts, by master):
    /// a master that does not answer is taken as down for its own keys, not for every
    /// master's. Until the masters are learned (or past 64 of them), the key's slot, 256 to a
    /// part (the last 64 parts: a part at the edge of two masters' ranges goes down with
    /// either).
    fn part(&self, key: &str) -> usize {
        let Some(masters) = &self.masters else {
            return 0;
        };
        let slot = RedisStore::slot(self.redis_key(key).as_bytes());
        let half = super::STORE_PARTS / 2;
        let masters = masters.ranges.load();
        let master = masters
            .binary_search_by(|&(first, last, _)| {
                if last < slot {
                    std::cmp::Ordering::Less
                } else if first > slot {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .ok()
            .map(|i| usize::from(masters[i].2))
            .filter(|&m| m < half);
        master.unwrap_or_else(|| half + usize::from(slot) / (16384 / half))
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let to = match self.conn {
            RedisConn::Single(_) | RedisConn::Watched(_) => "server",
            RedisConn::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisStore")
            .field("to", &to)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::{RedisStore, Value};

    /// The slots Redis's own documentation and `CLUSTER KEYSLOT` give.
    #[test]
    fn slots_are_redis_clusters() {
        assert_eq!(RedisStore::slot(b"foo"), 12182);
        assert_eq!(RedisStore::slot(b"123456789"), 12739);
        // A hash tag: only what is between the braces.
        assert_eq!(
            RedisStore::slot(b"{user1000}.following"),
            RedisStore::slot(b"user1000")
        );
        // An empty tag is no tag: the whole key (`bar` alone is 5061); the tag ends at the
        // first `}` after the first `{`.
        assert_eq!(RedisStore::slot(b"foo{}{bar}"), 8363);
        assert_eq!(RedisStore::slot(b"foo{{bar}}zap"), 4015);
    }

    /// `CLUSTER SLOTS` as Redis 7 answers it: ranges out of order, a master serving two, a
    /// replica after each master, the node's metadata map last.
    #[test]
    fn masters_are_read_from_cluster_slots() {
        use redis::Value::{Array, BulkString, Int};
        let node = |port: i64, id: &str| {
            Array(vec![
                BulkString(b"127.0.0.1".to_vec()),
                Int(port),
                BulkString(id.as_bytes().to_vec()),
                Array(vec![]),
            ])
        };
        let range = |a: i64, b: i64, master: Value| {
            Array(vec![Int(a), Int(b), master, node(9000 + a, "replica")])
        };
        let answer = Array(vec![
            range(10923, 16383, node(7103, "c")),
            range(0, 5460, node(7101, "a")),
            range(5461, 10000, node(7102, "b")),
            range(10001, 10922, node(7101, "a")),
        ]);
        let found = super::masters_of(&answer).expect("read");
        let names: Vec<(u16, u16, &str)> =
            found.iter().map(|(a, b, n)| (*a, *b, n.as_str())).collect();
        assert_eq!(
            names,
            vec![
                (0, 5460, "a"),
                (5461, 10000, "b"),
                (10001, 10922, "a"),
                (10923, 16383, "c")
            ]
        );
        let mut numbers = std::collections::HashMap::new();
        assert_eq!(
            super::number_masters(&mut numbers, &found),
            vec![
                (0, 5460, 0),
                (5461, 10000, 1),
                (10001, 10922, 0),
                (10923, 16383, 2)
            ]
        );
        // `a` failed over to `0`, whose id sorts first: `b` and `c` keep their numbers, the
        // new master takes one no master known holds (not `a`'s, which a part taken as down
        // may still hold).
        let after = vec![
            (0, 5460, "0".to_owned()),
            (5461, 10000, "b".to_owned()),
            (10001, 10922, "0".to_owned()),
            (10923, 16383, "c".to_owned()),
        ];
        assert_eq!(
            super::number_masters(&mut numbers, &after),
            vec![
                (0, 5460, 3),
                (5461, 10000, 1),
                (10001, 10922, 3),
                (10923, 16383, 2)
            ]
        );
        assert_eq!(super::masters_of(&Int(3)), None);
        assert_eq!(super::masters_of(&Array(vec![Array(vec![Int(0)])])), None);
    }
}
