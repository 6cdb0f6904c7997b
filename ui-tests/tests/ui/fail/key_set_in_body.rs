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

// The name made of the string, as a `HeaderName`: the same header.
#[resilient(idempotency_key = auto)]
async fn charge_by_name(c: &reqwest::Client, order: u64) -> Result<u16, Error> {
    Ok(c.post("http://127.0.0.1:1/charges")
        .header(
            reqwest::header::HeaderName::from_static("idempotency-key"),
            order.to_string(),
        )
        .send()
        .await?
        .status()
        .as_u16())
}

fn main() {
    let _ = charge;
    let _ = charge_by_name;
}
