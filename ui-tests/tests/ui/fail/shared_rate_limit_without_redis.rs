// A rate limit shared through Redis, in a build whose runtime has no `redis` feature: each
// instance would keep its own limit. Said as a warning (`deprecated`), denied here to show it:
// at the inline setting, and at the attribute for a limit named in the policy file.
#![deny(deprecated)]

use resilience_runtime::{Error, resilient};

#[resilient(rate_limit(rate = 20, store = "redis"))]
async fn inline(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

#[resilient(config = "../policies.toml", rate_limit = "partner")]
async fn from_the_file(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

// A local limit: nothing to say.
#[resilient(rate_limit(rate = 20, store = "local"))]
async fn local(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

fn main() {
    let _ = (inline, from_the_file, local);
}
