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

// The retry written in the attribute: the error points at it.
#[resilient(timeout = "2s", max_attempts = 3)]
async fn charge_thrice(c: &reqwest::Client) -> Result<(), Error> {
    send(c).await
}

// So does a `retry_on` written there, with the defaults' retries.
#[resilient(timeout = "2s", retry_on = [timeout, 503])]
async fn charge_on_timeouts(c: &reqwest::Client) -> Result<(), Error> {
    send(c).await
}

fn main() {}
