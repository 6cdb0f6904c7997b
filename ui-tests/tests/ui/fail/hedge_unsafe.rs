// Hedging the rule book refuses, each with its reason.
use resilience_runtime::{Error, resilient};

// A POST without a key: the hedge could apply it twice.
#[resilient(retry_on = [connect], hedge(delay = "50ms"))]
async fn pay(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.post("http://127.0.0.1:1/pay").send().await?.status().as_u16())
}

// A PUT not declared idempotent.
#[resilient(max_attempts = 1, hedge(delay = "50ms"))]
async fn put(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.put("http://127.0.0.1:1/x").send().await?.status().as_u16())
}

// The last hedge could never start: 2 × 600ms is past the 1s deadline.
#[resilient(timeout = "500ms", deadline = "1s", hedge(delay = "600ms", max = 2))]
async fn late(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

// Too many hedges, no delay, an unknown key.
#[resilient(hedge(max = 4, dealy = "1s"))]
async fn many(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

struct Counter {
    c: reqwest::Client,
    n: u32,
}

impl Counter {
    // Two attempts at once cannot both hold `&mut self`.
    #[resilient(max_attempts = 1, hedge(delay = "50ms"))]
    async fn bump(&mut self) -> Result<u16, Error> {
        self.n += 1;
        Ok(self.c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
    }

    // The same with the receiver's type written out.
    #[resilient(max_attempts = 1, hedge(delay = "50ms"))]
    async fn bump_typed(self: &mut Self) -> Result<u16, Error> {
        self.n += 1;
        Ok(self.c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
    }
}

// One attempt, but each hedge needs its own clone of a by-value parameter.
#[resilient(max_attempts = 1, hedge(delay = "50ms"))]
async fn split(c: &reqwest::Client, (host, path): (String, String)) -> Result<u16, Error> {
    Ok(c.get(format!("http://{host}/{path}")).send().await?.status().as_u16())
}

fn main() {}
