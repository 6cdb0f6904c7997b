use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

#[resilient(timout = "1s", backoff(multiplyer = 2))]
async fn fetch(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://127.0.0.1:1/")
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

// Keys of other retry libraries: what they are called here.
#[resilient(max_retries = 2, timeout_ms = 500, circuit_breaker = false)]
async fn elsewhere(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://127.0.0.1:1/")
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

// No close name: the known keys are listed.
#[resilient(zzz = 1)]
async fn nothing_like(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://127.0.0.1:1/")
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

fn main() {}
