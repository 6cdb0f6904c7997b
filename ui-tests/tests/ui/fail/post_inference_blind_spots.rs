// Unkeyed POSTs written so that an earlier reading missed them, beside a header map's `.get(`
// (which made the method an inferred GET, and the default retries compiled): a turbofish, the
// builder called as a path on the client, the method as a string. Each is refused.
use reqwest::header::HeaderMap;
use resilience_runtime::{Error, resilient};

#[resilient(timeout = "2s")]
pub async fn turbofish(c: &reqwest::Client, h: &HeaderMap) -> Result<u16, Error> {
    let _trace = h.get("x-trace");
    Ok(c.post::<&str>("http://127.0.0.1:1/charges")
        .send()
        .await?
        .status()
        .as_u16())
}

#[resilient(timeout = "2s")]
pub async fn as_a_path(c: &reqwest::Client, h: &HeaderMap) -> Result<u16, Error> {
    let _trace = h.get("x-trace");
    Ok(reqwest::Client::post(c, "http://127.0.0.1:1/charges")
        .send()
        .await?
        .status()
        .as_u16())
}

#[resilient(timeout = "2s")]
pub async fn as_a_string(c: &reqwest::Client, h: &HeaderMap) -> Result<u16, Error> {
    let _trace = h.get("x-trace");
    let method: reqwest::Method = "POST".parse().unwrap();
    Ok(c.request(method, "http://127.0.0.1:1/charges")
        .send()
        .await?
        .status()
        .as_u16())
}

#[resilient(timeout = "2s")]
pub async fn parsed_in_place(c: &reqwest::Client, h: &HeaderMap) -> Result<u16, Error> {
    let _trace = h.get("x-trace");
    Ok(c.request("POST".parse().unwrap(), "http://127.0.0.1:1/charges")
        .send()
        .await?
        .status()
        .as_u16())
}

fn main() {}
