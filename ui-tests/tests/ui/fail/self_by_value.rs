use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

struct Api {
    http: reqwest::Client,
}

impl Api {
    #[resilient]
    async fn fetch(self) -> Result<String, Error> {
        Ok(self
            .http
            .get("http://127.0.0.1:1/")
            .resilient()
            .send()
            .await?
            .text()
            .await?)
    }
}

fn main() {}
