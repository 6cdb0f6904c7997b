//! The idempotency layer and the shared rate limit when a master of their Redis Cluster fails:
//! each test starts its own cluster of three redis-server children on free loopback ports,
//! then freezes one master (SIGSTOP), thaws it, and kills it.
//!
//! Needs `redis-server` and `redis-cli` on the PATH (`.ci/cluster.sh` installs them). Without
//! them the tests are skipped, unless `CI` is set: then they fail.

#![cfg(feature = "redis")]

mod server_support;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use resilience_runtime::ratelimit::{self, RateLimitSpec, RateLimitStore, RateLimiter, Refused};
use resilience_runtime::server::{IdempotencyLayer, RedisStore, record_key};
use server_support::{Store, count, fresh_key, post, serve};
use tokio::time::Instant;

/// Three redis-server children, one master each, the slots split between them.
struct Cluster {
    nodes: Vec<Node>,
    dir: PathBuf,
}

struct Node {
    child: Option<Child>,
    port: u16,
}

/// A port free on 127.0.0.1 whose cluster bus port (+10000) is free too, and below the
/// kernel's ephemeral range (32768 and up) like the port itself: no socket of a test beside
/// this one is given either while a node is down to be restarted.
fn free_port() -> u16 {
    loop {
        let port = resilience_fault_server::free_port();
        if port + 10000 < 32768 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok()
        {
            return port;
        }
    }
}

impl Cluster {
    /// Starts one; `None` (skip) if redis-server or redis-cli is not installed, unless on CI.
    async fn start() -> Option<Cluster> {
        let installed = ["redis-server", "redis-cli"].iter().all(|b| {
            Command::new(b)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        if !installed {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "CI is set but redis-server or redis-cli is missing; .ci/cluster.sh installs them"
                );
            }
            let _ = writeln!(
                std::io::stderr(),
                "skipping: redis-server or redis-cli not found; .ci/cluster.sh installs them"
            );
            return None;
        }
        let dir = std::env::temp_dir().join(format!("resilience-cluster-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let mut cluster = Cluster {
            nodes: Vec::new(),
            dir,
        };
        for _ in 0..3 {
            let port = free_port();
            let child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(cluster.dir.join(format!("nodes-{port}.conf")))
                .args(["--cluster-node-timeout", "5000"])
                .args(["--save", "", "--appendonly", "no", "--dir"])
                .arg(&cluster.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server");
            cluster.nodes.push(Node {
                child: Some(child),
                port,
            });
        }
        for node in &cluster.nodes {
            wait_for(&format!("redis-server on {}", node.port), || {
                query(node.port, &["PING"])
            })
            .await;
        }
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(
                cluster
                    .nodes
                    .iter()
                    .map(|n| format!("127.0.0.1:{}", n.port)),
            )
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run redis-cli --cluster create");
        assert!(created.success(), "redis-cli --cluster create");
        for node in &cluster.nodes {
            wait_for(&format!("cluster_state:ok on {}", node.port), || async {
                let info = query(node.port, &["CLUSTER", "INFO"]).await?;
                info.contains("cluster_state:ok").then_some(info)
            })
            .await;
        }
        Some(cluster)
    }

    fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}/", n.port))
            .collect()
    }

    /// Each node's slot ranges (by port), asked of the cluster itself.
    async fn ranges(&self) -> BTreeMap<u16, Vec<(u16, u16)>> {
        let nodes = query(self.nodes[0].port, &["CLUSTER", "NODES"])
            .await
            .expect("CLUSTER NODES");
        let mut ranges: BTreeMap<u16, Vec<(u16, u16)>> = BTreeMap::new();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let Some(port) = fields
                .get(1)
                .and_then(|a| a.split('@').next()?.rsplit(':').next()?.parse().ok())
            else {
                continue;
            };
            for range in fields.iter().skip(8) {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
                    ranges.entry(port).or_default().push((a, b));
                }
            }
        }
        ranges
    }

    /// Which node (index) serves each Redis key, and in which slot, asked of the cluster.
    async fn owners_and_slots(&self, keys: &[String]) -> Vec<(usize, u16)> {
        let ranges = self.ranges().await;
        let mut out = Vec::new();
        for key in keys {
            let slot: u16 = query(self.nodes[0].port, &["CLUSTER", "KEYSLOT", key])
                .await
                .expect("CLUSTER KEYSLOT")
                .parse()
                .unwrap();
            let port = ranges
                .iter()
                .find(|(_, r)| r.iter().any(|&(a, b)| a <= slot && slot <= b))
                .map(|(p, _)| *p)
                .expect("every slot served");
            out.push((
                self.nodes.iter().position(|n| n.port == port).unwrap(),
                slot,
            ));
        }
        out
    }

    /// Which node (index) serves each Redis key, asked of the cluster itself.
    async fn owners(&self, keys: &[String]) -> Vec<usize> {
        let owners = self.owners_and_slots(keys).await;
        owners.into_iter().map(|(node, _)| node).collect()
    }

    fn signal(&self, node: usize, signal: &str) {
        let pid = self.nodes[node].child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill {signal} {pid}");
    }

    fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            if let Some(child) = &self.nodes[i].child {
                // Thaw first, so that a failed assertion never leaves a frozen server behind.
                let _ = Command::new("kill")
                    .args(["-CONT", &child.id().to_string()])
                    .status();
            }
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One command on a fresh connection to one node, its reply as text; `None` if no answer in
/// 500 ms.
async fn query(port: u16, args: &[&str]) -> Option<String> {
    let q = async {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        match cmd.query_async::<redis::Value>(&mut conn).await? {
            redis::Value::Int(n) => Ok(n.to_string()),
            v => redis::from_redis_value::<String>(v).map_err(redis::RedisError::from),
        }
    };
    tokio::time::timeout(Duration::from_millis(500), q)
        .await
        .ok()?
        .ok()
}

async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<String>>,
{
    let give_up = Instant::now() + Duration::from_secs(15);
    while f().await.is_none() {
        assert!(Instant::now() < give_up, "{what}: not within 15 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const PREFIX: &str = "faults:";

/// Fresh Idempotency-Keys for `POST /orders`, `per` of them for each node.
async fn keys_per_node(cluster: &Cluster, per: usize) -> Vec<Vec<String>> {
    let mut out = vec![Vec::new(); cluster.nodes.len()];
    while out.iter().any(|k| k.len() < per) {
        let keys: Vec<String> = (0..16).map(|_| fresh_key()).collect();
        let redis_keys: Vec<String> = keys
            .iter()
            .map(|k| {
                format!(
                    "{PREFIX}{}",
                    record_key(&reqwest::Method::POST, "/orders", k, None)
                )
            })
            .collect();
        for (key, owner) in keys.into_iter().zip(cluster.owners(&redis_keys).await) {
            if out[owner].len() < per {
                out[owner].push(key);
            }
        }
    }
    out
}

/// With the layer's defaults (a store that did not answer a claim is taken as down for a
/// second): a frozen master takes only its own keys down, answered 503 at once after the first
/// one timed out (the store knows which master serves which slots), while the other masters'
/// keys are served; before, every master's keys were refused for as long as one was frozen.
#[tokio::test]
async fn a_frozen_master_takes_only_its_own_keys_down() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let store: Store = Arc::new(
        RedisStore::connect_cluster(cluster.urls())
            .await
            .expect("connect")
            .prefix(PREFIX),
    );
    let app = serve(&store, IdempotencyLayer::new(store.clone())).await;
    let url = app.url("/orders");
    let frozen = 0;
    // Until the store has learned the masters, its parts are of 256 slots: keys of the other
    // masters are taken outside those that hold any of the frozen master's slots (a part at
    // the edge of two ranges goes down with either master).
    let frozen_port = cluster.nodes[frozen].port;
    let frozen_parts: std::collections::BTreeSet<u16> = cluster.ranges().await[&frozen_port]
        .iter()
        .flat_map(|&(a, b)| a / 256..=b / 256)
        .collect();
    let mut mine = Vec::new();
    let mut others = Vec::new();
    while mine.len() < 8 || others.len() < 6 {
        let keys: Vec<String> = (0..16).map(|_| fresh_key()).collect();
        let redis_keys: Vec<String> = keys
            .iter()
            .map(|k| {
                format!(
                    "{PREFIX}{}",
                    record_key(&reqwest::Method::POST, "/orders", k, None)
                )
            })
            .collect();
        for (key, (node, slot)) in keys
            .into_iter()
            .zip(cluster.owners_and_slots(&redis_keys).await)
        {
            if node == frozen {
                mine.push(key);
            } else if !frozen_parts.contains(&(slot / 256)) {
                others.push(key);
            }
        }
    }
    // The store asks which master serves which slots as it connects: answered by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.signal(frozen, "-STOP");
    // The frozen master's keys: refused in time, the first after the store timeout (250 ms),
    // the next at once, whatever their slots: the master is down, not a range of slots.
    let mut waited = 0;
    for key in &mine[..8] {
        let started = Instant::now();
        let refused = post(&url, Some(key), "x").await;
        assert_eq!(refused.status, 503, "{refused:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
        if started.elapsed() >= Duration::from_millis(240) {
            waited += 1;
        }
    }
    assert!(waited <= 2, "{waited} of 8 waited for the frozen master");
    // The other masters' keys, within the second the frozen one's parts are taken as down:
    // served.
    for key in &others[..6] {
        let served = post(&url, Some(key), "x").await;
        assert_eq!(served.status, 201, "another master's key: {served:?}");
    }
    assert_eq!(count(&app.runs.orders), 6);
    cluster.signal(frozen, "-CONT");
}

#[tokio::test]
async fn a_frozen_master_is_answered_503_in_time_and_withdrawn_claims_free_its_keys() {
    let Some(mut cluster) = Cluster::start().await else {
        return;
    };
    let store: Store = Arc::new(
        RedisStore::connect_cluster(cluster.urls())
            .await
            .expect("connect")
            .prefix(PREFIX),
    );
    // Zero: each request asks the store, so that the other masters' keys show they are served.
    let layer = IdempotencyLayer::new(store.clone()).store_down_for(Duration::ZERO);
    let app = serve(&store, layer).await;
    let url = app.url("/orders");
    let keys = keys_per_node(&cluster, 3).await;
    let frozen = 0;

    // Stored while every master answers.
    let stored = post(&url, Some(&keys[frozen][0]), "x").await;
    assert_eq!(stored.status, 201, "{stored:?}");

    cluster.signal(frozen, "-STOP");
    for key in &keys[frozen] {
        let started = Instant::now();
        let refused = post(&url, Some(key), "x").await;
        assert_eq!(refused.status, 503, "{refused:?}");
        assert_eq!(refused.header("retry-after"), Some("1"));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "503 after {took:?}");
    }
    for (node, keys) in keys.iter().enumerate().filter(|(n, _)| *n != frozen) {
        let served = post(&url, Some(&keys[0]), "x").await;
        assert_eq!(
            served.status, 201,
            "node {node} serves its keys: {served:?}"
        );
    }
    let runs = count(&app.runs.orders);
    assert_eq!(runs, 3, "the handler ran for the answered claims only");

    // Thawed: the claims the frozen master took late were withdrawn, so its keys run now (the
    // first one replays), rather than 409 for a whole lease.
    cluster.signal(frozen, "-CONT");
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        let r = post(&url, Some(&keys[frozen][1]), "x").await;
        if r.status == 201 {
            assert!(!r.replayed(), "{r:?}");
            break;
        }
        assert!(
            [503, 409].contains(&r.status) && Instant::now() < give_up,
            "{r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let replay = post(&url, Some(&keys[frozen][0]), "x").await;
    assert_eq!(
        (replay.status, replay.replayed()),
        (201, true),
        "{replay:?}"
    );
    assert_eq!(replay.body, stored.body);
    assert_eq!(count(&app.runs.orders), runs + 1);

    // Killed: its keys are refused fast, the others still served.
    cluster.kill(frozen);
    let started = Instant::now();
    let refused = post(&url, Some(&keys[frozen][2]), "x").await;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let served = post(&url, Some(&keys[1][1]), "x").await;
    assert_eq!(served.status, 201, "{served:?}");
}

#[tokio::test]
async fn a_shared_limit_falls_back_to_the_local_limit_while_its_master_is_frozen() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    const NAME: &str = "cluster_faults_limit";
    let client = redis::cluster::ClusterClient::new(cluster.urls()).unwrap();
    let conn = client.get_async_connection().await.expect("connect");
    assert!(ratelimit::use_redis_cluster(conn));
    let limiter = RateLimiter::new(
        NAME,
        RateLimitSpec {
            // One per 10 s: no permit comes back while the test runs.
            rate: 1,
            per: Duration::from_secs(10),
            burst: 2,
            max_wait: Duration::ZERO,
            store: RateLimitStore::Redis,
        },
    );
    let far = || Instant::now() + Duration::from_secs(10);

    // Through the cluster: the burst, then refused.
    assert_eq!(limiter.acquire_by(far()).await, Ok(()));
    assert_eq!(limiter.acquire_by(far()).await, Ok(()));
    assert_eq!(limiter.acquire_by(far()).await, Err(Refused::Limited));
    assert_eq!(limiter.snapshot().local_fallbacks, 0);
    // The limit's key lives on one master, and holds the state.
    let key = format!("resilience:rate:{{{NAME}}}");
    let owner = cluster.owners(std::slice::from_ref(&key)).await[0];
    let port = cluster.nodes[owner].port;
    assert!(query(port, &["GET", &key]).await.is_some());

    // Its master frozen: each decision is local, within the 250 ms bound; the local limit
    // holds, knowing the burst this instance took from Redis (it once added a fresh burst of
    // its own: four permits where the limit allows two).
    cluster.signal(owner, "-STOP");
    let mut results = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        results.push(limiter.acquire_by(far()).await);
        let took = started.elapsed();
        assert!(took < Duration::from_millis(600), "decided after {took:?}");
    }
    assert_eq!(results, [Err(Refused::Limited); 3]);
    assert_eq!(limiter.snapshot().local_fallbacks, 3);
    // Asked once; the next two were local at once (Redis taken as down for a second).
    assert_eq!(limiter.snapshot().store_unanswered, 1);

    // Thawed: the cluster decides again.
    cluster.signal(owner, "-CONT");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        let before = limiter.snapshot().local_fallbacks;
        let _ = limiter.acquire_by(far()).await;
        if limiter.snapshot().local_fallbacks == before {
            break;
        }
        assert!(Instant::now() < give_up, "still local 10 s after the thaw");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A master that lost its scripts (restarted, or `SCRIPT FLUSH`) while another node is frozen:
/// its keys are still served. The script goes by its source to the key's master alone (loading
/// it on every node first needed all of them to answer, so the frozen one stopped the healthy
/// master's keys: 503, and the store taken as down).
#[tokio::test]
async fn a_master_that_lost_its_scripts_serves_its_keys_while_another_is_frozen() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let store: Store = Arc::new(
        RedisStore::connect_cluster(cluster.urls())
            .await
            .expect("connect")
            .prefix(PREFIX),
    );
    let layer = IdempotencyLayer::new(store.clone()).store_down_for(Duration::ZERO);
    let app = serve(&store, layer).await;
    let url = app.url("/orders");
    let keys = keys_per_node(&cluster, 2).await;
    let stored = post(&url, Some(&keys[0][0]), "x").await;
    assert_eq!(stored.status, 201, "{stored:?}");

    assert_eq!(
        query(cluster.nodes[0].port, &["SCRIPT", "FLUSH"])
            .await
            .as_deref(),
        Some("OK")
    );
    cluster.signal(1, "-STOP");
    let started = Instant::now();
    let served = post(&url, Some(&keys[0][1]), "x").await;
    assert_eq!(served.status, 201, "{served:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let replay = post(&url, Some(&keys[0][0]), "x").await;
    assert_eq!(
        (replay.status, replay.replayed()),
        (201, true),
        "{replay:?}"
    );
    cluster.signal(1, "-CONT");
}
