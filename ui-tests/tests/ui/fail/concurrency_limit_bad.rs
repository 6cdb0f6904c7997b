// Adaptive concurrency limits the rule book refuses, each with its reason.
use resilience_runtime::{Error, resilient};

// No latency threshold.
#[resilient(concurrency_limit(initial = 8))]
async fn a(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

// Out of range.
#[resilient(concurrency_limit(latency = "100ms", min = 0, max = 2000000))]
async fn b(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

// Out of order: the limit starts under its floor.
#[resilient(concurrency_limit(latency = "100ms", min = 8, initial = 4))]
async fn c(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

// A backoff that never lowers the limit.
#[resilient(concurrency_limit(latency = "100ms", backoff = 1.0))]
async fn d(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

// A latency no answer can reach: the attempt ends at its timeout first.
#[resilient(timeout = "1s", concurrency_limit(latency = "1s"))]
async fn e(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

// The file's latency is 150 ms; this timeout is shorter.
#[resilient(config = "../policies.toml", concurrency_limit = "inventory", timeout = "100ms")]
async fn f(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

// A wait for a slot as long as the deadline it counts against.
#[resilient(deadline = "2s", timeout = "1s", concurrency_limit(latency = "100ms", max_wait = "2s"))]
async fn g(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

// Both a fixed bulkhead and an adaptive limit.
#[resilient(bulkhead(max_concurrent = 10), concurrency_limit(latency = "100ms"))]
async fn h(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

// An unknown kind and an unknown key.
#[resilient(concurrency_limit(kind = "fixed", latency = "100ms", backof = 0.5))]
async fn i(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

// A name the file does not define.
#[resilient(config = "../policies.toml", concurrency_limit = "inventroy")]
async fn j(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

fn main() {}
