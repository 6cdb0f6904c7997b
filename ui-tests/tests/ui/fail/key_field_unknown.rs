// A key path naming a field its parameter does not have: the compiler's error points at the
// field, where the mistake is.
use resilience_runtime::{Error, resilient};

struct Order {
    id: String,
}

#[resilient(idempotency_key = order.idd)]
async fn place(c: &reqwest::Client, order: &Order) -> Result<(), Error> {
    c.post("http://127.0.0.1:1/orders").send().await?;
    Ok(())
}

fn main() {
    let _ = place;
    let _ = Order { id: String::new() };
}
