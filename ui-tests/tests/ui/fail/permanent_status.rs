// A permanent status in retry_on: the same request gets the same answer.
use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

#[resilient(retry_on = [connect, 503, 404])]
async fn fetch(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://127.0.0.1:1/")
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

// A 5xx that says the request itself cannot be served: the same answer again.
#[resilient(retry_on = [503, 501])]
async fn unimplemented(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://127.0.0.1:1/")
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

// A class of statuses, written inline: listed one by one instead (not every 5xx is transient).
#[resilient(retry_on = [connect, 5xx])]
async fn every_5xx(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.text().await?)
}

fn main() {}
