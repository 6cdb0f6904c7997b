// `[defaults]` speaks for the crate at large, not for one endpoint: `idempotent` there is
// refused (every PUT and DELETE written later would be retried on it), and its `method` does
// not declare a body that chooses its method at run time.
use resilience_runtime::{Error, resilient};

#[resilient(config = "../defaults_claims.toml")]
async fn remove(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.delete(url).send().await?.status().as_u16())
}

#[resilient(config = "../defaults_claims.toml", idempotent = false)]
async fn by_value(c: &reqwest::Client, m: reqwest::Method, url: &str) -> Result<u16, Error> {
    Ok(c.request(m, url).send().await?.status().as_u16())
}

fn main() {}
