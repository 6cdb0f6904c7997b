use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

#[resilient(idempotency_key = request_id)]
async fn charge(c: &reqwest::Client, requestid: &str) -> Result<(), Error> {
    let _ = requestid;
    c.post("http://127.0.0.1:1/charges")
        .resilient()
        .send()
        .await?;
    Ok(())
}

#[resilient(idempotency_key = nosuchparam)]
async fn refund(c: &reqwest::Client) -> Result<(), Error> {
    c.post("http://127.0.0.1:1/refunds")
        .resilient()
        .send()
        .await?;
    Ok(())
}

// From the file: the message says where in it.
#[resilient(config = "../policies.toml", policy = "keyed_by_order_id")]
async fn capture(c: &reqwest::Client, order: &str) -> Result<(), Error> {
    let _ = order;
    c.post("http://127.0.0.1:1/captures").send().await?;
    Ok(())
}

fn main() {}
