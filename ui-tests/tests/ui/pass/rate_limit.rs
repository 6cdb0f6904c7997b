// A client-side rate limit: inline (private to the function), or named in the policy file and
// shared through Redis.
use resilience_runtime::{Error, resilient};

#[resilient(rate_limit(rate = 20, per = "1s", burst = 5, max_wait = "100ms"))]
async fn search(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

// Built here without the runtime's `redis` feature: a warning says the limit is then each
// instance's own (fail/shared_rate_limit_without_redis.rs).
#[allow(deprecated)]
#[resilient(config = "../policies.toml", rate_limit = "partner")]
async fn quote(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

fn main() {
    let _ = (search, quote);
}
