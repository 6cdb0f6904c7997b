// On error the function is still emitted as written, so code calling it compiles: the only
// error is the macro's own.
use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

#[resilient]
async fn charge(c: &reqwest::Client, amount: u64) -> Result<String, Error> {
    Ok(c.post("http://127.0.0.1:1/charges")
        .body(amount.to_string())
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

async fn checkout(c: &reqwest::Client) -> Result<usize, Error> {
    let receipt: String = charge(c, 10).await?;
    Ok(receipt.len())
}

fn main() {
    let c = reqwest::Client::new();
    let _pending = checkout(&c);
}
