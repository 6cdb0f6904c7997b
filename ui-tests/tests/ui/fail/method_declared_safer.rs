use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

// Declaring GET does not make the POST in the body safe to retry.
#[resilient(method = GET, timeout = "2s")]
async fn sneaky(http: &reqwest::Client) -> Result<(), Error> {
    http.post("http://127.0.0.1:8080/charges").resilient().send().await?;
    Ok(())
}

fn main() {}
