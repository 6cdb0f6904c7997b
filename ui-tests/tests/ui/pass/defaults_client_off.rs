// `[defaults] client = "pg"` (connect timeout 3 s) switched off for a function whose attempt
// timeout is shorter: it is given another client at run time.
use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

#[resilient(config = "../defaults_client.toml", timeout = "2s", client = false)]
async fn fetch(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://127.0.0.1:1/")
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

// The word the other named parts take for "none".
#[resilient(config = "../defaults_client.toml", timeout = "2s", client = "off")]
async fn fetch_off(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://127.0.0.1:1/")
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

fn main() {
    let _ = (fetch, fetch_off);
}
