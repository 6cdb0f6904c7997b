//! The idempotency layer over a Redis Cluster, through real sockets: every rule of the
//! in-memory store, instances sharing the cluster, and the records of many keys spread over
//! every master.
//!
//! Needs a Redis Cluster at `RESILIENCE_REDIS_CLUSTER_URLS` (comma-separated node URLs, default
//! `redis://127.0.0.1:7101/,redis://127.0.0.1:7102/,redis://127.0.0.1:7103/`; `.ci/cluster.sh`
//! starts one of three masters). Without it the tests are skipped, unless `CI` is set: then
//! they fail.

#![cfg(feature = "redis")]

mod server_support;

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use redis::ErrorKind;
use resilience_runtime::server::{IdempotencyLayer, RedisStore};
use server_support::{App, Store, count, fresh_key, post, serve};

const DEFAULT_URLS: &str =
    "redis://127.0.0.1:7101/,redis://127.0.0.1:7102/,redis://127.0.0.1:7103/";

/// The cluster's node URLs if it answers PING; `None` (skip) if not, unless on CI.
async fn cluster_urls() -> Option<Vec<String>> {
    let urls =
        std::env::var("RESILIENCE_REDIS_CLUSTER_URLS").unwrap_or_else(|_| DEFAULT_URLS.to_owned());
    let urls: Vec<String> = urls.split(',').map(|u| u.trim().to_owned()).collect();
    let ping = async {
        let client = redis::cluster::ClusterClient::new(urls.clone())?;
        let mut conn = client.get_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    let why = match tokio::time::timeout(Duration::from_secs(3), ping).await {
        Ok(Ok(_)) => return Some(urls),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer within 3s".to_owned(),
    };
    let urls = urls.join(",");
    if std::env::var_os("CI").is_some() {
        panic!(
            "CI is set but the Redis Cluster at {urls} is unreachable ({why}); start it with .ci/cluster.sh"
        );
    }
    // Straight to stderr: the test harness captures `eprintln!`, and a skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "skipping: the Redis Cluster at {urls} is unreachable ({why}); start it with .ci/cluster.sh"
    );
    None
}

/// A prefix no other test, nor an earlier run, shares.
fn prefix(test: &str) -> String {
    format!("resilience-test:{test}:{}:", uuid::Uuid::new_v4())
}

async fn connect(urls: &[String], prefix: &str) -> RedisStore {
    RedisStore::connect_cluster(urls)
        .await
        .expect("connect to the Redis Cluster")
        .prefix(prefix)
}

/// The store of one rule's test, on a prefix of its own; `None` (skip) without the cluster.
async fn store_for(test: &str) -> Option<Store> {
    let urls = cluster_urls().await?;
    Some(Arc::new(connect(&urls, &prefix(test)).await))
}

server_support::every_rule!(store_for);

/// One instance of the service, with its own cluster connection.
async fn instance(urls: &[String], prefix: &str) -> App {
    let store: Store = Arc::new(connect(urls, prefix).await);
    serve(&store, IdempotencyLayer::new(store.clone())).await
}

/// The masters of the cluster, as `redis://ip:port/`, from `CLUSTER NODES` on one node.
async fn masters(urls: &[String]) -> Vec<String> {
    let client = redis::Client::open(urls[0].as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut conn)
        .await
        .unwrap();
    nodes
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let addr = fields.nth(1)?;
            let flags = fields.next()?;
            let master = flags.split(',').any(|f| f == "master");
            let failed = flags.split(',').any(|f| f == "fail" || f == "fail?");
            let ip_port = addr.split('@').next()?;
            (master && !failed).then(|| format!("redis://{ip_port}/"))
        })
        .collect()
}

/// How many keys starting with `prefix` one node holds (its own, not the cluster's).
async fn keys_on(node: &str, prefix: &str) -> usize {
    let client = redis::Client::open(node).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut cursor = 0u64;
    let mut n = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        n += keys.len();
        if next == 0 {
            return n;
        }
        cursor = next;
    }
}

#[tokio::test]
async fn the_records_of_many_keys_spread_over_every_master() {
    let Some(urls) = cluster_urls().await else {
        return;
    };
    let masters = masters(&urls).await;
    assert!(
        masters.len() >= 2,
        "a cluster of one master proves nothing about slots: {masters:?}; start .ci/cluster.sh"
    );
    let prefix = prefix("spread");
    let app = instance(&urls, &prefix).await;
    // 60 random keys: the chance that one of three even masters gets none is 3 × (2/3)^60.
    const KEYS: usize = 60;
    let mut keys = Vec::new();
    for i in 0..KEYS {
        let key = fresh_key();
        let body = format!("item {i}");
        let ran = post(&app.url("/orders"), Some(&key), &body).await;
        assert_eq!((ran.status, ran.replayed()), (201, false), "{ran:?}");
        keys.push((key, body, ran.body));
    }
    // Each replayed from wherever its record lives.
    for (key, body, first) in &keys {
        let replay = post(&app.url("/orders"), Some(key), body).await;
        assert_eq!(
            (replay.status, replay.replayed()),
            (201, true),
            "{replay:?}"
        );
        assert_eq!(&replay.body, first);
    }
    assert_eq!(count(&app.runs.orders), KEYS);
    let mut held = Vec::new();
    for m in &masters {
        held.push((m.as_str(), keys_on(m, &prefix).await));
    }
    assert_eq!(
        held.iter().map(|(_, n)| n).sum::<usize>(),
        KEYS,
        "one record per key, each on one master: {held:?}"
    );
    assert!(
        held.iter().all(|&(_, n)| n > 0),
        "every master holds some of the records: {held:?}"
    );
}

/// Keys a client writes with braces are a Redis hash tag: the records of `{acct42}-0001`,
/// `{acct42}-0002`, … share one slot, so one master holds them all (the README's Redis Cluster
/// section), where as many keys without it spread (above).
#[tokio::test]
async fn keys_with_one_hash_tag_share_a_master() {
    let Some(urls) = cluster_urls().await else {
        return;
    };
    let masters = masters(&urls).await;
    assert!(masters.len() >= 2, "{masters:?}; start .ci/cluster.sh");
    let prefix = prefix("tagged");
    let app = instance(&urls, &prefix).await;
    let account = format!("acct{}", fresh_key().replace('-', ""));
    const KEYS: usize = 30;
    for i in 0..KEYS {
        let key = format!("{{{account}}}-{i:04}");
        let ran = post(&app.url("/orders"), Some(&key), "x").await;
        assert_eq!((ran.status, ran.replayed()), (201, false), "{key}: {ran:?}");
        let replay = post(&app.url("/orders"), Some(&key), "x").await;
        assert_eq!((replay.status, replay.replayed()), (201, true), "{key}");
    }
    let mut held = Vec::new();
    for m in &masters {
        held.push(keys_on(m, &prefix).await);
    }
    held.sort();
    assert_eq!(held.last(), Some(&KEYS), "all on one master: {held:?}");
    assert_eq!(held.iter().sum::<usize>(), KEYS, "{held:?}");
}

#[tokio::test]
async fn instances_sharing_the_cluster_run_each_key_once() {
    let Some(urls) = cluster_urls().await else {
        return;
    };
    let prefix = prefix("instances_sharing_cluster");
    let (a, b) = (
        instance(&urls, &prefix).await,
        instance(&urls, &prefix).await,
    );
    server_support::instances_run_each_key_once(&a, &b, 12).await;
}

#[tokio::test]
async fn concurrent_requests_across_instances_run_the_handler_once() {
    let Some(urls) = cluster_urls().await else {
        return;
    };
    let prefix = prefix("concurrent_across_cluster_instances");
    let apps = [
        instance(&urls, &prefix).await,
        instance(&urls, &prefix).await,
    ];
    // Several keys, so that more than one master is raced on.
    server_support::concurrent_requests_across_instances_run_once(&apps, 3).await;
}

fn kind(e: &resilience_runtime::server::StoreError) -> Option<ErrorKind> {
    let source = std::error::Error::source(e)?;
    source.downcast_ref::<redis::RedisError>().map(|e| e.kind())
}

#[tokio::test]
async fn a_cluster_without_nodes_is_a_configuration_error() {
    let e = RedisStore::connect_cluster(Vec::<String>::new())
        .await
        .unwrap_err();
    assert_eq!(kind(&e), Some(ErrorKind::InvalidClientConfig), "{e}");
    assert!(e.to_string().contains("at least one of its nodes"), "{e}");
    let e = RedisStore::connect_cluster(["redis://127.0.0.1:7101/", " "])
        .await
        .unwrap_err();
    assert_eq!(kind(&e), Some(ErrorKind::InvalidClientConfig), "{e}");
    assert!(e.to_string().contains("node 2 of 2"), "{e}");
    let e = RedisStore::connect_cluster(["not a url"])
        .await
        .unwrap_err();
    assert!(kind(&e).is_some(), "{e}");
}

#[tokio::test]
async fn a_cluster_nobody_answers_is_an_error_soon() {
    // A port just bound and released: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = std::time::Instant::now();
    let e = RedisStore::connect_cluster([format!("redis://127.0.0.1:{port}/")])
        .await
        .unwrap_err();
    assert!(kind(&e).is_some(), "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "{:?}: {e}",
        t.elapsed()
    );
}
