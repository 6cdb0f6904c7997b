use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

#[resilient(max_attempts = 0)]
async fn never(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://127.0.0.1:1/")
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

#[resilient(max_attempts = 11)]
async fn too_many(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://127.0.0.1:1/")
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

#[resilient(max_attempts = 5000000000)]
async fn past_u32(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://127.0.0.1:1/")
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

fn main() {}
