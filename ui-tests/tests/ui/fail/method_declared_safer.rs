use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

// Declaring GET does not make the POST in the body safe to retry.
#[resilient(method = GET, timeout = "2s")]
async fn sneaky(http: &reqwest::Client) -> Result<(), Error> {
    http.post("http://127.0.0.1:8080/charges").resilient().send().await?;
    Ok(())
}

// Nor where the body also chooses a method at run time: the POST it shows is still there.
#[resilient(method = GET, timeout = "2s")]
async fn sneaky_beside_a_chosen_one(
    http: &reqwest::Client,
    m: reqwest::Method,
) -> Result<(), Error> {
    http.post("http://127.0.0.1:8080/charges").send().await?;
    http.request(m, "http://127.0.0.1:8080/other").send().await?;
    Ok(())
}

// Nor a raw identifier: `r#post` is `.post(`.
#[resilient(method = GET, timeout = "2s")]
async fn sneaky_raw(http: &reqwest::Client) -> Result<(), Error> {
    http.r#post("http://127.0.0.1:8080/charges").r#send().await?;
    Ok(())
}

fn main() {}
