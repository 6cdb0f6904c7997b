// A PUT is only resent on ambiguous failures when the author declares it `idempotent`.
use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

#[resilient(timeout = "2s")]
async fn store(c: &reqwest::Client, doc: String) -> Result<(), Error> {
    c.put("http://127.0.0.1:1/docs/1")
        .body(doc)
        .resilient()
        .send()
        .await?;
    Ok(())
}

fn main() {}
