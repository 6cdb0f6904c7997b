// A PATCH whose retries come from the attribute: the error points at the inline `retry_on`.
use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

#[resilient(retry_on = [connect, 503], max_attempts = 4)]
async fn rename(c: &reqwest::Client, name: String) -> Result<(), Error> {
    c.patch("http://127.0.0.1:1/account")
        .body(name)
        .resilient()
        .send()
        .await?;
    Ok(())
}

fn main() {}
