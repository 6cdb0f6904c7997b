use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

#[resilient(timeout "1s")]
async fn missing_equals(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://127.0.0.1:1/")
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

#[resilient(max_attempts = -1)]
async fn negative(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://127.0.0.1:1/")
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

fn main() {}
