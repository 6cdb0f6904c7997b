// The body sends through a helper, so the method is declared.
use resilience_runtime::{Error, resilient};

async fn send(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.text().await?)
}

#[resilient(method = GET)]
async fn fetch(c: &reqwest::Client) -> Result<String, Error> {
    send(c).await
}

// Without retries, the method does not matter.
#[resilient(max_attempts = 1)]
async fn fetch_once(c: &reqwest::Client) -> Result<String, Error> {
    send(c).await
}

fn main() {
    let _ = fetch;
    let _ = fetch_once;
}
