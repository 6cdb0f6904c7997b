// A DELETE found through `Method::DELETE`, with retries asked for inline.
use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

#[resilient(max_attempts = 5)]
async fn remove(c: &reqwest::Client) -> Result<(), Error> {
    c.request(reqwest::Method::DELETE, "http://127.0.0.1:1/docs/1")
        .resilient()
        .send()
        .await?;
    Ok(())
}

fn main() {}
