use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

#[resilient(timout = "1s", backoff(multiplyer = 2))]
async fn fetch(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://127.0.0.1:1/")
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

fn main() {}
