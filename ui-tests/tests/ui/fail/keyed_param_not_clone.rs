// A keyed call asks again for the replay of a request still in progress even with
// `max_attempts = 1`: its by-value arguments are cloned for each attempt, so they must be
// `Clone` there too.
use resilience_runtime::{Error, resilient};

struct Order {
    amount: u64,
}

#[resilient(max_attempts = 1, idempotency_key = auto)]
async fn charge(c: &reqwest::Client, order: Order) -> Result<String, Error> {
    Ok(c.post("http://127.0.0.1:1/charges")
        .body(order.amount.to_string())
        .send()
        .await?
        .text()
        .await?)
}

fn main() {}
