use resilience_runtime::resilient;

// An error type the runtime's own errors (a timeout, an open breaker) cannot become.
#[resilient(timeout = "1s")]
async fn stringly(c: &reqwest::Client) -> Result<u16, String> {
    let r = c.get("http://127.0.0.1:1/").send().await.map_err(|e| e.to_string())?;
    Ok(r.status().as_u16())
}

fn main() {}
