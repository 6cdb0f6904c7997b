// A POST with a generated key, the same on every attempt: the server can replay by key.
use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

#[resilient(idempotency_key = auto)]
async fn charge(c: &reqwest::Client, amount: u64) -> Result<(), Error> {
    c.post("http://127.0.0.1:1/charges")
        .body(amount.to_string())
        .resilient()
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

// PATCH is held to the same rule, and satisfied the same way.
#[resilient(idempotency_key = auto, max_attempts = 5)]
async fn rename(c: &reqwest::Client, name: String) -> Result<(), Error> {
    c.patch("http://127.0.0.1:1/account")
        .body(name)
        .resilient()
        .send()
        .await?;
    Ok(())
}

fn main() {
    let _ = charge;
    let _ = rename;
}
