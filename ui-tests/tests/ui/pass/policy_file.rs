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

// A policy whose client connects slower than the file's default timeout, completed inline.
#[resilient(
    config = "../policies.toml",
    policy = "webhooks",
    timeout = "30s",
    deadline = "90s"
)]
async fn notify(c: &reqwest::Client) -> Result<(), Error> {
    c.get("http://127.0.0.1:1/hooks").resilient().send().await?;
    Ok(())
}

fn main() {
    // The same file's [clients.pg], for building the reqwest client.
    let _settings = resilience_runtime::client!("pg", config = "../policies.toml");
    // A client whose policy's functions give attempts more time inline builds too: the rule
    // is checked at each of them (`notify`), with their own timeout.
    let _webhooks = resilience_runtime::client!("webhooks", config = "../policies.toml");
    let _ = charge;
    let _ = fetch;
    let _ = notify;
}
