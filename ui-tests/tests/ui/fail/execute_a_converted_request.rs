// A request built as an `http::Request` (signed, say) and converted where it is handed to
// `execute`: the attribute routes the argument by its type, which the conversion leaves to be
// inferred. Refused with the way out (its `pass` twin writes the type).
use resilience_runtime::{Error, resilient};

#[resilient(method = POST, idempotency_key = auto, timeout = "2s")]
async fn signed(c: &reqwest::Client, url: &str, body: Vec<u8>) -> Result<u16, Error> {
    let req = http::Request::builder()
        .method("POST")
        .uri(url)
        .body(body)
        .map_err(Error::call)?;
    Ok(c.execute(req.try_into()?).await?.status().as_u16())
}

fn main() {
    let _ = signed;
}
