//! A method taking `self` by value, not retried, with a fallback: the body only borrows
//! `self`, and the fallback is called with it after the body.
use resilience_runtime::{Error, resilient};

struct Api {
    http: reqwest::Client,
}

async fn offline(_api: Api) -> Result<String, Error> {
    Ok(String::new())
}

impl Api {
    #[resilient(timeout = "1s", max_attempts = 1, fallback = offline)]
    async fn fetch(self) -> Result<String, Error> {
        Ok(self.http.get("http://127.0.0.1:1/").send().await?.text().await?)
    }
}

fn main() {}
