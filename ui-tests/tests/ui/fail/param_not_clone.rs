// Each attempt re-runs the body with a fresh clone of every by-value argument.
use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

struct Query {
    q: String,
}

#[resilient]
async fn search(c: &reqwest::Client, query: Query) -> Result<String, Error> {
    Ok(c.get("http://127.0.0.1:1/search")
        .body(query.q)
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

// A destructured by-value parameter has no name to clone.
#[resilient]
async fn pair(c: &reqwest::Client, (a, b): (String, String)) -> Result<String, Error> {
    Ok(c.get(format!("http://127.0.0.1:1/{a}/{b}"))
        .resilient()
        .send()
        .await?
        .text()
        .await?)
}

fn main() {}
