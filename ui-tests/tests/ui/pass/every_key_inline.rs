// Every policy key, written inline, in both value syntaxes.
use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

#[resilient(
    method = GET,
    timeout = 2s,
    deadline = "10s",
    max_attempts = 4,
    backoff(kind = exponential, initial = 50ms, max = "1s", multiplier = 1.5, jitter = equal),
    retry_on = [connect, reset, timeout, 429, 503],
    max_retry_after = "5s",
    budget = { ratio = 0.2, min_per_sec = 5 },
    breaker = { name = "inventory", failure_rate = 0.5, min_calls = 5, window = 10, open_for = "10s", half_open_calls = 1 },
    bulkhead = { max_concurrent = 8, max_wait = "10ms" },
)]
async fn stock(c: &reqwest::Client, sku: &str) -> Result<String, Error> {
    Ok(c.get(format!("http://127.0.0.1:1/stock/{sku}"))
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

struct Inventory {
    http: reqwest::Client,
}

impl Inventory {
    // `&self` with retries, and no retry budget.
    #[resilient(budget = false, backoff = constant)]
    async fn count(&self) -> Result<String, Error> {
        Ok(self
            .http
            .get("http://127.0.0.1:1/count")
            .resilient()
            .send()
            .await?
            .text()
            .await?)
    }

    // A constant wait longer than the default max (2s), which a constant backoff never uses.
    #[resilient(budget = false, deadline = "60s", backoff(kind = constant, initial = "5s"))]
    async fn restock(&self) -> Result<u16, Error> {
        Ok(self
            .http
            .get("http://127.0.0.1:1/restock")
            .resilient()
            .send()
            .await?
            .status()
            .as_u16())
    }
}

fn main() {
    let _ = Inventory::restock;
    let _ = stock;
    let _ = Inventory::count;
}
