// Errors in values that come from a policy file point at the attribute and start with the
// file's line and column.
use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

#[resilient(config = "../bad_values.toml", policy = "reads")]
async fn fetch(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://127.0.0.1:1/")
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

fn main() {}
