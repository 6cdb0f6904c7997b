// [clients.slow] has connect_timeout = "5s", longer than this function's attempt timeout.
use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

#[resilient(config = "../policies.toml", client = "slow", timeout = "3s")]
async fn fetch(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://127.0.0.1:1/")
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

fn main() {}
