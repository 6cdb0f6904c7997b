// `#[tracing::instrument]` written above `#[resilient]` expands first and so wraps each
// attempt: the macro says so at it, as a warning (here denied to show it).
#![deny(deprecated)]

use resilience_runtime::{Error, resilient};

#[tracing::instrument(err, skip(c))]
#[resilient(timeout = "1s")]
async fn fetch(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

// Below it: one span per call, nothing to say.
#[resilient(timeout = "1s")]
#[tracing::instrument(err, skip(c))]
async fn fetch_once(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

fn main() {
    let _ = fetch;
    let _ = fetch_once;
}
