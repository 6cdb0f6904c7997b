// A keyed function whose body writes its own Idempotency-Key: one key, from one place.
use resilience_runtime::{Error, resilient};

#[resilient(idempotency_key = auto)]
async fn charge(c: &reqwest::Client, order: u64) -> Result<u16, Error> {
    Ok(c.post("http://127.0.0.1:1/charges")
        .header("Idempotency-Key", format!("{order}-{}", std::process::id()))
        .send()
        .await?
        .status()
        .as_u16())
}

fn main() {
    let _ = charge;
}
