// A Result under another name, `io::Result`, and durations with a decimal fraction.
use resilience_runtime::{Error, resilient};

type R<T> = Result<T, Error>;

#[resilient(timeout = "1.5s", deadline = 4.25s)]
async fn aliased(c: &reqwest::Client) -> R<u16> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

#[resilient(timeout = "1s")]
async fn io_result(c: &reqwest::Client) -> std::io::Result<u16> {
    let resp = c
        .get("http://127.0.0.1:1/")
        .send()
        .await
        .map_err(std::io::Error::other)?;
    Ok(resp.status().as_u16())
}

fn main() {
    let _ = aliased;
    let _ = io_result;
}
