use resilience_runtime::resilient;

#[derive(Debug)]
enum PaymentError {
    Unreachable,
}

// An error type the runtime's own errors (a timeout, an open breaker) cannot become.
#[resilient(timeout = "1s")]
async fn own_error(c: &reqwest::Client) -> Result<u16, PaymentError> {
    let r = c
        .get("http://127.0.0.1:1/")
        .send()
        .await
        .map_err(|_| PaymentError::Unreachable)?;
    Ok(r.status().as_u16())
}

// The shape of reqwest's own examples: its error type cannot hold a timeout of the runtime's.
#[resilient(timeout = "1s")]
async fn reqwest_error(c: &reqwest::Client) -> Result<String, reqwest::Error> {
    c.get("http://127.0.0.1:1/").send().await?.text().await
}

fn main() {}
