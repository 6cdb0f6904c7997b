// Named policies and shared state from a policy file.
use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

#[resilient(config = "../policies.toml", policy = "payments")]
async fn charge(c: &reqwest::Client) -> Result<(), Error> {
    c.post("http://127.0.0.1:1/charges")
        .resilient()
        .send()
        .await?;
    Ok(())
}

// Inline keys override the policy.
#[resilient(
    config = "../policies.toml",
    policy = "reads",
    max_attempts = 2,
    timeout = "1s"
)]
async fn fetch(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://127.0.0.1:1/")
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

fn main() {
    // The same file's [clients.pg], for building the reqwest client.
    let _settings = resilience_runtime::client!("pg", config = "../policies.toml");
    let _ = charge;
    let _ = fetch;
}
