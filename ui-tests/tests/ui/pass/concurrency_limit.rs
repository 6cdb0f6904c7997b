// An adaptive concurrency limit: inline (private to the function, defaults for what is not
// given), named in the policy file and shared, or through a policy.
use resilience_runtime::{Error, resilient};

#[resilient(concurrency_limit(latency = "200ms"))]
async fn search(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

#[resilient(concurrency_limit = { kind = aimd, initial = 16, min = 1, max = 256, latency = "200ms", backoff = 0.9, max_wait = "50ms" })]
async fn lookup(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

#[resilient(config = "../policies.toml", concurrency_limit = "inventory")]
async fn stock(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

#[resilient(config = "../policies.toml", policy = "adaptive")]
async fn reserve(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

fn main() {
    let _ = (search, lookup, stock, reserve);
}
