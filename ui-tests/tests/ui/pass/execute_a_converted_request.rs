// A request built as an `http::Request` (signed, say), converted with its type written, then
// handed to `execute`: stamped as any request is.
use resilience_runtime::{Error, resilient};
// Not in the prelude before the 2021 edition.
#[allow(unused_imports)]
use std::convert::TryInto;

#[resilient(method = POST, idempotency_key = auto, timeout = "2s")]
async fn signed(c: &reqwest::Client, url: &str, body: Vec<u8>) -> Result<u16, Error> {
    let req = http::Request::builder()
        .method("POST")
        .uri(url)
        .body(body)
        .map_err(Error::call)?;
    let req: reqwest::Request = req.try_into()?;
    Ok(c.execute(req).await?.status().as_u16())
}

fn main() {
    let _ = signed;
}
