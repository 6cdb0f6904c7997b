use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

#[resilient(
    timeout = "1s",
    max_attempts = 2,
    timeout = "2s",
    policy = "a",
    policy = "b"
)]
async fn fetch(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://127.0.0.1:1/")
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

#[resilient(backoff(initial = "1ms", initial = "2ms"), budget = { ratio = 0.1, ratio = 0.2 })]
async fn in_tables(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://127.0.0.1:1/")
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

fn main() {}
