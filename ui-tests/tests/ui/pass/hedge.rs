// Hedging where a duplicate is harmless: a GET, a PUT declared idempotent, a keyed POST, and a
// policy from the file; by-value arguments are cloned for each hedge.
use resilience_runtime::{Error, resilient};

#[resilient(hedge(delay = "50ms"))]
async fn read(c: &reqwest::Client, url: String) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

#[resilient(idempotent, hedge(delay = "100ms", max = 3))]
async fn store(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.put("http://127.0.0.1:1/x").send().await?.status().as_u16())
}

#[resilient(idempotency_key = auto, hedge = { delay = "200ms" })]
async fn pay(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.post("http://127.0.0.1:1/pay").send().await?.status().as_u16())
}

struct Api {
    c: reqwest::Client,
}

impl Api {
    #[resilient(config = "../policies.toml", policy = "hedged_reads")]
    async fn get(&self) -> Result<u16, Error> {
        Ok(self.c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
    }
}

fn main() {
    let _ = (read, store, pay, Api::get);
}
