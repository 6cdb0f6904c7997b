// A fallback for a function returning `impl Trait`: the fallback's `impl Trait` is another type.
use resilience_runtime::{Error, resilient};

async fn cached(_c: &reqwest::Client) -> Result<impl Iterator<Item = u8>, Error> {
    Ok(Vec::new().into_iter())
}

#[resilient(fallback = cached)]
async fn fresh(c: &reqwest::Client) -> Result<impl Iterator<Item = u8>, Error> {
    let body = c.get("http://127.0.0.1:1/").send().await?.bytes().await?;
    Ok(body.to_vec().into_iter())
}

fn main() {}
