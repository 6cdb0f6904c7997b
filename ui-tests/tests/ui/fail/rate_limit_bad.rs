// Rate limits the rule book refuses, each with its reason.
use resilience_runtime::{Error, resilient};

// No rate.
#[resilient(rate_limit(burst = 5))]
async fn a(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

// Out of range.
#[resilient(rate_limit(rate = 0, burst = 2000000))]
async fn b(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

// A wait for a permit as long as the deadline it counts against.
#[resilient(deadline = "2s", timeout = "1s", rate_limit(rate = 10, max_wait = "2s"))]
async fn c(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

// An unknown store and an unknown key.
#[resilient(rate_limit(rate = 10, store = "memcached", brust = 3))]
async fn d(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

// The file's limit waits 200 ms; this deadline is shorter.
#[resilient(config = "../policies.toml", rate_limit = "partner", deadline = "150ms", timeout = "100ms")]
async fn e(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

// A name the file does not define.
#[resilient(config = "../policies.toml", rate_limit = "partnr")]
async fn f(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

fn main() {}
