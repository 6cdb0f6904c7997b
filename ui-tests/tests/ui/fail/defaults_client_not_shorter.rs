// The same function as pass/defaults_client_off.rs without `client = false`: the [defaults]
// client's connect timeout (3 s) is not shorter than its attempt timeout.
use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

#[resilient(config = "../defaults_client.toml", timeout = "2s")]
async fn fetch(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://127.0.0.1:1/")
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

fn main() {}
