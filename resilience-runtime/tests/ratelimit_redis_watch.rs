//! A rate limit shared through a Redis whose host vanishes without a reset (its connection
//! carries nothing more, and nothing closes it: a power cut, a partition), with a Redis
//! answering at the same address: through `ratelimit::connect_redis`, Redis decides again
//! within a few seconds, on a new connection, instead of each instance deciding alone until the
//! kernel gives up on the socket. (The only test of this binary: the connection is the
//! process's.)

#![cfg(feature = "redis")]

mod redis_support;

use std::time::Duration;

use redis_support::{BlackHole, Redis};
use resilience_runtime::ratelimit::{self, RateLimitSpec, RateLimitStore, RateLimiter};
use tokio::time::Instant;

#[tokio::test]
async fn a_rate_limits_redis_gone_without_a_reset_is_reconnected() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let proxy = BlackHole::start(redis.port).await;
    assert!(
        ratelimit::connect_redis(&proxy.url())
            .await
            .expect("connect")
    );
    let limiter = RateLimiter::new(
        "watched_limit",
        RateLimitSpec {
            rate: 1000,
            per: Duration::from_secs(1),
            burst: 1000,
            max_wait: Duration::ZERO,
            store: RateLimitStore::Redis,
        },
    );
    let far = || Instant::now() + Duration::from_secs(10);
    assert_eq!(limiter.acquire_by(far()).await, Ok(()));
    assert_eq!(limiter.snapshot().local_fallbacks, 0, "Redis decided");
    // Every connection made so far carries nothing from now on.
    proxy.cut(proxy.made.load(std::sync::atomic::Ordering::SeqCst));
    let started = Instant::now();
    loop {
        let before = limiter.snapshot().local_fallbacks;
        assert_eq!(limiter.acquire_by(far()).await, Ok(()));
        if limiter.snapshot().local_fallbacks == before {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "still deciding alone after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        limiter.snapshot().local_fallbacks > 0,
        "the silent connection was asked first"
    );
}
