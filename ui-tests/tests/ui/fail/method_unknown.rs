// Retries are on, but the body sends through a helper: the method cannot be inferred.
use resilience_runtime::{Error, resilient};

async fn send(c: &reqwest::Client) -> Result<(), Error> {
    c.post("http://127.0.0.1:1/charges").send().await?;
    Ok(())
}

#[resilient(timeout = "2s")]
async fn charge(c: &reqwest::Client) -> Result<(), Error> {
    send(c).await
}

fn main() {}
