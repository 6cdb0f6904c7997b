// Names that no section defines, with suggestions where one is close.
use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

#[resilient(config = "../policies.toml", policy = "paymnets")]
async fn policy(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://127.0.0.1:1/")
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

#[resilient(config = "../policies.toml", breaker = "pgg")]
async fn breaker(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://127.0.0.1:1/")
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

#[resilient(config = "../policies.toml", budget = "checkout")]
async fn budget(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://127.0.0.1:1/")
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

#[resilient(config = "../policies.toml", bulkhead = "gp")]
async fn bulkhead(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://127.0.0.1:1/")
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

#[resilient(config = "../policies.toml", client = "fast")]
async fn client(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://127.0.0.1:1/")
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

// No policy file at all.
#[resilient(policy = "payments")]
async fn no_file(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://127.0.0.1:1/")
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

fn main() {}
