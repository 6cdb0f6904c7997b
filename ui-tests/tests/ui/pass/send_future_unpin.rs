// A rewritten `.send()` is `Unpin` as reqwest's is: raced by reference in a loop, handed to
// `futures`-style combinators that need `Unpin`.
use std::time::Duration;

use resilience_runtime::{Error, resilient};

#[resilient(timeout = "10s")]
async fn with_progress(c: &reqwest::Client) -> Result<u16, Error> {
    let mut sending = c.get("http://127.0.0.1:1/").send();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            r = &mut sending => return Ok(r?.status().as_u16()),
            _ = tick.tick() => {}
        }
    }
}

fn unpin<F: Unpin>(f: F) -> F {
    f
}

#[resilient(timeout = "10s")]
async fn first_mirror(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(unpin(c.get("http://127.0.0.1:1/a").send()).await?.status().as_u16())
}

fn main() {
    let _ = with_progress;
    let _ = first_mirror;
}
