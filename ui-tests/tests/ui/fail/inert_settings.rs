// Settings that could never take effect: a hedge whose delay is not shorter than the attempt's
// timeout (the attempt ends first), a slow-call rate with no duration to call a call slow.
use resilience_runtime::{Error, resilient};

#[resilient(method = GET, timeout = "1s", hedge(delay = "2s"))]
async fn hedged_too_late(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

#[resilient(method = GET, breaker(failure_rate = 0.5, slow_call_rate = 0.5))]
async fn slow_rate_alone(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

fn main() {}
