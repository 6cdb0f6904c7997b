// Retrying only when nothing was sent is safe for any method.
use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

#[resilient(retry_on = [connect])]
async fn charge(c: &reqwest::Client) -> Result<(), Error> {
    c.post("http://127.0.0.1:1/charges")
        .resilient()
        .send()
        .await?;
    Ok(())
}

fn main() {
    let _ = charge;
}
