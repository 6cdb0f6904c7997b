//! The idempotency layer over Redis, through real sockets: every rule of the in-memory store,
//! plus instances sharing one Redis and an instance restarting.
//!
//! Needs a Redis at `RESILIENCE_REDIS_URL` (default `redis://127.0.0.1:6399/`; `.ci/redis.sh`
//! starts one). Without it the tests are skipped, unless `CI` is set: then they fail.

#![cfg(feature = "redis")]

mod server_support;

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use resilience_runtime::server::{IdempotencyLayer, RedisStore};
use server_support::{App, Store, count, fresh_key, post, serve};

const DEFAULT_URL: &str = "redis://127.0.0.1:6399/";

/// The Redis URL if it answers PING; `None` (skip) if not, unless on CI.
async fn redis_url() -> Option<String> {
    let url = std::env::var("RESILIENCE_REDIS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let ping = async {
        let client = redis::Client::open(url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    let why = match tokio::time::timeout(Duration::from_secs(2), ping).await {
        Ok(Ok(_)) => return Some(url),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer within 2s".to_owned(),
    };
    if std::env::var_os("CI").is_some() {
        panic!("CI is set but Redis at {url} is unreachable ({why}); start it with .ci/redis.sh");
    }
    // Straight to stderr: the test harness captures `eprintln!`, and a skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "skipping: Redis at {url} is unreachable ({why}); start it with .ci/redis.sh"
    );
    None
}

/// A prefix no other test, nor an earlier run, shares.
fn prefix(test: &str) -> String {
    format!("resilience-test:{test}:{}:", uuid::Uuid::new_v4())
}

async fn connect(url: &str, prefix: &str) -> RedisStore {
    RedisStore::connect(url)
        .await
        .expect("connect to Redis")
        .prefix(prefix)
}

/// The store of one rule's test, on a prefix of its own; `None` (skip) without Redis.
async fn store_for(test: &str) -> Option<Store> {
    let url = redis_url().await?;
    Some(Arc::new(connect(&url, &prefix(test)).await))
}

server_support::every_rule!(store_for);

/// One instance of the service, with its own Redis connection.
async fn instance(url: &str, prefix: &str) -> App {
    let store: Store = Arc::new(connect(url, prefix).await);
    serve(&store, IdempotencyLayer::new(store.clone())).await
}

#[tokio::test]
async fn instances_sharing_redis_run_each_key_once() {
    let Some(url) = redis_url().await else { return };
    let prefix = prefix("instances_sharing_redis");
    let (a, b) = (instance(&url, &prefix).await, instance(&url, &prefix).await);
    server_support::instances_run_each_key_once(&a, &b, 6).await;
}

#[tokio::test]
async fn concurrent_requests_across_instances_run_the_handler_once() {
    let Some(url) = redis_url().await else { return };
    let prefix = prefix("concurrent_across_instances");
    let apps = [instance(&url, &prefix).await, instance(&url, &prefix).await];
    server_support::concurrent_requests_across_instances_run_once(&apps, 1).await;
}

#[tokio::test]
async fn a_restarted_instance_still_replays() {
    let Some(url) = redis_url().await else { return };
    let prefix = prefix("restarted_instance");
    let key = fresh_key();

    let before = instance(&url, &prefix).await;
    let ran = post(&before.url("/orders"), Some(&key), "x").await;
    assert_eq!((ran.status, ran.replayed()), (201, false));
    drop(before); // server and store gone

    let after = instance(&url, &prefix).await;
    let replay = post(&after.url("/orders"), Some(&key), "x").await;
    assert_eq!((replay.status, replay.replayed()), (201, true));
    assert_eq!(replay.body, ran.body);
    assert_eq!(replay.header("x-order"), Some("1"));
    assert_eq!(
        count(&after.runs.orders),
        0,
        "the handler did not run after the restart"
    );
}

/// "One Redis, several services: a prefix each": two services with the same route take the
/// same key, in one Redis, under different prefixes; each runs its own handler, neither
/// replays the other's answer.
#[tokio::test]
async fn services_with_a_prefix_each_do_not_share_keys() {
    let Some(url) = redis_url().await else { return };
    let (a, b) = (
        instance(&url, &prefix("service_a")).await,
        instance(&url, &prefix("service_b")).await,
    );
    let key = fresh_key();
    let from_a = post(&a.url("/orders"), Some(&key), "x").await;
    let from_b = post(&b.url("/orders"), Some(&key), "x").await;
    assert_eq!((from_a.status, from_a.replayed()), (201, false));
    assert_eq!(
        (from_b.status, from_b.replayed()),
        (201, false),
        "{}",
        from_b.body
    );
    assert_eq!(count(&a.runs.orders), 1);
    assert_eq!(count(&b.runs.orders), 1);
    // And each replays its own.
    let again = post(&b.url("/orders"), Some(&key), "x").await;
    assert_eq!((again.status, again.replayed()), (201, true));
    assert_eq!(again.body, from_b.body);
}
