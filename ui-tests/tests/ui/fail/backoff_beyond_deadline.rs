// A backoff whose shortest wait before a retry is not shorter than the deadline: no retry can
// begin, and the retries written are never made.
use resilience_runtime::{Error, resilient};

#[resilient(method = GET, timeout = "500ms", deadline = "1s", backoff(kind = constant, initial = "1s", jitter = none))]
async fn polled(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

// Equal jitter waits at least half the first step: 1.5 s here.
#[resilient(method = GET, timeout = "500ms", deadline = "1s", backoff(initial = "3s", max = "3s"))]
async fn halved(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

// Accepted: full jitter may draw a wait of nothing.
#[resilient(method = GET, timeout = "500ms", deadline = "1s", backoff(initial = "3s", max = "3s", jitter = full))]
async fn drawn(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

// Accepted: no retry asked for.
#[resilient(method = GET, timeout = "500ms", deadline = "1s", max_attempts = 1, backoff(kind = constant, initial = "1s", jitter = none))]
async fn once(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

// Nothing written in the attribute: the error names the file's deadline.
#[resilient(config = "../short_deadline.toml", method = GET)]
async fn from_the_file(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

fn main() {}
