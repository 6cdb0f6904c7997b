// [clients.unset] sets no connect_timeout: the default's 3 s is not shorter than this
// function's attempt timeout, and the error says it is the default's.
use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

#[resilient(config = "../bad_clients.toml", client = "unset", timeout = "2s")]
async fn fetch(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://127.0.0.1:1/")
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

fn main() {}
