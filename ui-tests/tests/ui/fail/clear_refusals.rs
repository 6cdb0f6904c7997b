// Each refusal says what is wrong and how to fix it, at the user's tokens.
use std::sync::Arc;

use resilience_runtime::{Error, resilient};

#[resilient(timeout = "1.s", max_attempts = 3u8, budget(ratio = 1e400))]
async fn values(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

#[resilient(budget(ratio = 0.5f64))]
async fn suffixed_float(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

struct Svc {
    http: reqwest::Client,
}

impl Svc {
    #[resilient(timeout = "1s")]
    async fn shared(self: Arc<Self>) -> Result<u16, Error> {
        Ok(self.http.get("http://127.0.0.1:1/").send().await?.status().as_u16())
    }
}

trait Api {
    #[resilient(timeout = "1s")]
    async fn declared(&self) -> Result<u16, Error>;
}

#[resilient(idempotency_key = auto)]
async fn keyed_without_a_request(c: &reqwest::Client) -> Result<u16, Error> {
    charge_in_a_helper(c).await
}

async fn charge_in_a_helper(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.post("http://127.0.0.1:1/").send().await?.status().as_u16())
}

type Count = u32;

#[resilient(timeout = "1s")]
async fn not_a_result_by_alias(c: &reqwest::Client) -> Count {
    let _ = c.get("http://127.0.0.1:1/").send().await;
    1
}

// A window below the default min_calls (10): the error is at `window`.
#[resilient(timeout = "1s", breaker(failure_rate = 0.5, window = 5))]
async fn window_below_min_calls(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

fn main() {}
