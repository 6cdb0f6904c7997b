// Every bad duration is reported at once, each at its own value.
use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

#[resilient(
    timeout = "5",
    deadline = "5 parsecs",
    max_retry_after = 5,
    backoff(initial = 3.5)
)]
async fn fetch(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://127.0.0.1:1/")
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

#[resilient(timeout = "0s", deadline = "99999999999999h")]
async fn zero(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://127.0.0.1:1/")
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

fn main() {}
