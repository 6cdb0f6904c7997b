// The unsafe settings come from a policy file: the message gives file:line:col for each.
use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

#[resilient(config = "../unsafe_policy.toml", policy = "charge")]
async fn charge(c: &reqwest::Client) -> Result<(), Error> {
    c.post("http://127.0.0.1:1/charges")
        .resilient()
        .send()
        .await?;
    Ok(())
}

fn main() {}
