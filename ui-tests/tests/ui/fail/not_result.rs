use resilience_runtime::{RequestBuilderExt as _, resilient};

#[resilient]
async fn status(c: &reqwest::Client) -> Option<u16> {
    let r = c.get("http://127.0.0.1:1/").resilient().send().await.ok()?;
    Some(r.status().as_u16())
}

#[resilient]
async fn fire(c: &reqwest::Client) {
    let _ = c.get("http://127.0.0.1:1/").resilient().send().await;
}

fn main() {}
