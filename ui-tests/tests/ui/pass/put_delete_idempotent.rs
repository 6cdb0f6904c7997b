// PUT and DELETE may be resent once the author declares them idempotent.
use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

#[resilient(idempotent)]
async fn store(c: &reqwest::Client, doc: String) -> Result<(), Error> {
    c.put("http://127.0.0.1:1/docs/1")
        .body(doc)
        .resilient()
        .send()
        .await?;
    Ok(())
}

#[resilient(idempotent = true, max_attempts = 5)]
async fn remove(c: &reqwest::Client) -> Result<(), Error> {
    c.request(reqwest::Method::DELETE, "http://127.0.0.1:1/docs/1")
        .resilient()
        .send()
        .await?;
    Ok(())
}

fn main() {
    let _ = store;
    let _ = remove;
}
