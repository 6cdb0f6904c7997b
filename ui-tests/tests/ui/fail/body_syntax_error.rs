use resilience_runtime::{Error, resilient};

// A syntax error in the body while it is being written: the parser's own message, where it
// stopped, not "goes on an async fn".
#[resilient(timeout = "1s")]
async fn unfinished(c: &reqwest::Client) -> Result<u16, Error> {
    let status = ;
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

fn main() {}
