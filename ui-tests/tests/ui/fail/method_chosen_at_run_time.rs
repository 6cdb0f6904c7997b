// The method is a value (a parameter, `Method::from_bytes`): it may be any, so an unrelated
// `.get(` in the body (a header map's) does not make it a GET.
use resilience_runtime::{Error, resilient};

#[resilient(timeout = "2s")]
async fn any(c: &reqwest::Client, m: reqwest::Method, url: &str) -> Result<u16, Error> {
    let headers = reqwest::header::HeaderMap::new();
    let _op = headers.get("x-op");
    Ok(c.request(m, url).headers(headers).send().await?.status().as_u16())
}

#[resilient(timeout = "2s")]
async fn purge(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let purge = reqwest::Method::from_bytes(b"PURGE").unwrap();
    let cached = c.get(url).send().await?.status();
    let _ = cached;
    Ok(c.request(purge, url).send().await?.status().as_u16())
}

fn main() {}
