// A fallback with the same signature: on every final failure, or on chosen kinds; a method
// falls back on a method.
use resilience_runtime::{Error, resilient};

async fn cached(_c: &reqwest::Client, id: u64) -> Result<String, Error> {
    Ok(format!("cached {id}"))
}

#[resilient(fallback = cached)]
async fn fresh(c: &reqwest::Client, id: u64) -> Result<String, Error> {
    Ok(c.get(format!("http://127.0.0.1:1/{id}")).send().await?.text().await?)
}

#[resilient(fallback = cached, fallback_on = [circuit_open, budget_exhausted, deadline])]
async fn fresh_or_cached(c: &reqwest::Client, id: u64) -> Result<String, Error> {
    Ok(c.get(format!("http://127.0.0.1:1/{id}")).send().await?.text().await?)
}

// From the file: `fallback = "cached"`.
#[resilient(config = "../policies.toml", policy = "with_fallback")]
async fn from_file(c: &reqwest::Client, id: u64) -> Result<String, Error> {
    Ok(c.get(format!("http://127.0.0.1:1/{id}")).send().await?.text().await?)
}

struct Api;

impl Api {
    #[resilient(fallback = Self::offline)]
    async fn status(&self, c: &reqwest::Client) -> Result<u16, Error> {
        Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
    }

    async fn offline(&self, _c: &reqwest::Client) -> Result<u16, Error> {
        Ok(503)
    }

    // A method named as a function of the module: `health` there is another function (the
    // method itself would be `Self::health`), called with the receiver first.
    #[resilient(fallback = health)]
    async fn health(&self, c: &reqwest::Client) -> Result<u16, Error> {
        Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
    }
}

async fn health(_api: &Api, _c: &reqwest::Client) -> Result<u16, Error> {
    Ok(200)
}

fn main() {
    let _ = (fresh, fresh_or_cached, from_file, Api::status, Api::health);
}
