// A POST with the built-in defaults retries after failures where the request may have arrived.
use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

#[resilient]
async fn charge(c: &reqwest::Client, amount: u64) -> Result<(), Error> {
    c.post("http://127.0.0.1:1/charges")
        .body(amount.to_string())
        .resilient()
        .send()
        .await?;
    Ok(())
}

fn main() {}
