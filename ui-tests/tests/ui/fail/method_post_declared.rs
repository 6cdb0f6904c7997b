// The method is declared, not inferred (the body sends through a helper): the error points at
// `method = POST`.
use resilience_runtime::{Error, resilient};

async fn send(c: &reqwest::Client) -> Result<(), Error> {
    c.post("http://127.0.0.1:1/charges").send().await?;
    Ok(())
}

#[resilient(method = POST)]
async fn charge(c: &reqwest::Client) -> Result<(), Error> {
    send(c).await
}

fn main() {}
