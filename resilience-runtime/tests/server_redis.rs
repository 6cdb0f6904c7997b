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

    const KEYS: usize = 6;
    for i in 0..KEYS {
        let key = fresh_key();
        let body = format!("item {i}");
        // Alternate which instance sees the key first.
        let (first, second) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let ran = post(&first.url("/orders"), Some(&key), &body).await;
        assert_eq!((ran.status, ran.replayed()), (201, false));
        for app in [second, first, second] {
            let replay = post(&app.url("/orders"), Some(&key), &body).await;
            assert_eq!(
                (replay.status, replay.replayed()),
                (201, true),
                "{replay:?}"
            );
            assert_eq!(replay.body, ran.body);
        }
        assert_eq!(
            post(&second.url("/orders"), Some(&key), "other")
                .await
                .status,
            422
        );
    }
    assert_eq!(count(&a.runs.orders) + count(&b.runs.orders), KEYS);
    assert_eq!(count(&a.runs.orders), KEYS / 2);

    // A key still running on one instance is busy on the other.
    let key = fresh_key();
    let running = tokio::spawn({
        let (url, key) = (a.url("/gated"), key.clone());
        async move { post(&url, Some(&key), "x").await }
    });
    server_support::wait_until(|| count(&a.runs.gated) == 1).await;
    assert_eq!(post(&b.url("/gated"), Some(&key), "x").await.status, 409);
    a.gate.add_permits(1);
    assert_eq!(running.await.unwrap().status, 201);
    assert!(post(&b.url("/gated"), Some(&key), "x").await.replayed());
    assert_eq!(count(&b.runs.gated), 0);
}

#[tokio::test]
async fn concurrent_requests_across_instances_run_the_handler_once() {
    let Some(url) = redis_url().await else { return };
    let prefix = prefix("concurrent_across_instances");
    let apps = [instance(&url, &prefix).await, instance(&url, &prefix).await];
    let key = fresh_key();
    let client = server_support::client();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let req = client
            .post(apps[i % 2].url("/slow"))
            .header("idempotency-key", &key)
            .header("x-sleep-ms", "300")
            .body("x");
        tasks.spawn(server_support::send(req));
    }
    let replies = tasks.join_all().await;
    assert_eq!(count(&apps[0].runs.slow) + count(&apps[1].runs.slow), 1);
    let ran = replies
        .iter()
        .filter(|r| r.status == 201 && !r.replayed())
        .count();
    assert_eq!(ran, 1, "{replies:?}");
    assert!(
        replies.iter().all(|r| r.status == 201 || r.status == 409),
        "{replies:?}"
    );
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
