// A keyed function that reads the Idempotency-Key header of the answer (to log it) sets no key
// of its own: accepted.
use resilience_runtime::{Error, resilient};

#[resilient(idempotency_key = auto)]
async fn charge(c: &reqwest::Client) -> Result<String, Error> {
    let resp = c.post("http://127.0.0.1:1/charges").send().await?;
    let echoed = resp
        .headers()
        .get("Idempotency-Key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok(echoed)
}

fn main() {
    let _ = charge;
}
