// `[defaults] idempotent = false` claims nothing about any endpoint (no PUT or DELETE is
// taken for idempotent by default): accepted, unlike `true`; a DELETE then still needs a
// claim of its own (or a key) to be retried.
use resilience_runtime::{Error, resilient};

#[resilient(config = "../defaults_not_idempotent.toml")]
async fn fetch(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

#[resilient(config = "../defaults_not_idempotent.toml", idempotent = true)]
async fn remove(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.delete(url).send().await?.status().as_u16())
}

fn main() {
    let _ = (fetch, remove);
}
