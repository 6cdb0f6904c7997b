// Slow-call and time-window settings the rule book refuses.
use resilience_runtime::{Error, resilient};

// An attempt ends at its 1 s timeout: no success could take 2 s.
#[resilient(timeout = "1s", breaker(slow_call_duration = "2s"))]
async fn a(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

// Out of range.
#[resilient(breaker(window_for = "500ms", slow_call_rate = 1.5))]
async fn b(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

fn main() {}
