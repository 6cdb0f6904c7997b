// Breakers that see time and slowness: a time-based window, a slow-call rate.
use resilience_runtime::{Error, resilient};

#[resilient(
    timeout = "2s",
    breaker(window_for = "60s", min_calls = 20, failure_rate = 0.5, slow_call_duration = "1s", slow_call_rate = 0.8)
)]
async fn watched(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

fn main() {
    let _ = watched;
}
