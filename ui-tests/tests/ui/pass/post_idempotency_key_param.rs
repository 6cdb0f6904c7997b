// The key comes from the caller: a parameter, or a field path rooted at one.
use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

#[resilient(idempotency_key = request_id)]
async fn charge(c: &reqwest::Client, request_id: &str, amount: u64) -> Result<(), Error> {
    c.post("http://127.0.0.1:1/charges")
        .body(amount.to_string())
        .resilient()
        .send()
        .await?;
    Ok(())
}

struct Order {
    id: String,
    total: u64,
}

#[resilient(idempotency_key = order.id)]
async fn place(c: &reqwest::Client, order: &Order) -> Result<(), Error> {
    c.post("http://127.0.0.1:1/orders")
        .body(order.total.to_string())
        .resilient()
        .send()
        .await?;
    Ok(())
}

// A by-value key parameter is cloned for each attempt like any other.
#[resilient(idempotency_key = key)]
async fn refund(c: &reqwest::Client, key: String) -> Result<(), Error> {
    c.post("http://127.0.0.1:1/refunds")
        .header("x-key", key)
        .resilient()
        .send()
        .await?;
    Ok(())
}

// A tuple field, or a field of one, is a field path too.
struct Transfer {
    ids: (String, (u64, String)),
}

#[resilient(idempotency_key = transfer.ids.0)]
async fn transfer(c: &reqwest::Client, transfer: &Transfer) -> Result<(), Error> {
    c.post("http://127.0.0.1:1/transfers").send().await?;
    Ok(())
}

#[resilient(idempotency_key = transfer.ids.1.1)]
async fn transfer_again(c: &reqwest::Client, transfer: &Transfer) -> Result<(), Error> {
    c.post("http://127.0.0.1:1/transfers").send().await?;
    Ok(())
}

fn main() {
    let _ = charge;
    let _ = place;
    let _ = refund;
    let _ = transfer;
    let _ = transfer_again;
    let _ = Transfer {
        ids: (String::new(), (0, String::new())),
    };
    let _ = Order {
        id: String::new(),
        total: 0,
    };
}
