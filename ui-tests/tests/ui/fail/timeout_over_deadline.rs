use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

#[resilient(timeout = "10s", deadline = "5s")]
async fn fetch(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://127.0.0.1:1/")
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

fn main() {}
