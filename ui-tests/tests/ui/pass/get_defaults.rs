// A GET may be resent on every transient failure: the built-in defaults are safe.
use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

#[resilient]
async fn fetch(c: &reqwest::Client, id: u64) -> Result<String, Error> {
    Ok(c.get(format!("http://127.0.0.1:1/items/{id}"))
        .resilient()
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

fn main() {
    let _ = fetch;
}
