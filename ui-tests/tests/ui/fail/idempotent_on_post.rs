// `idempotent` cannot make a POST safe to resend; only an idempotency key can.
use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

#[resilient(idempotent)]
async fn charge(c: &reqwest::Client) -> Result<(), Error> {
    c.post("http://127.0.0.1:1/charges")
        .resilient()
        .send()
        .await?;
    Ok(())
}

fn main() {}
