// #[async_trait] rewrites the method before #[resilient] sees it: say so, and what to do.
use resilience_runtime::{Error, resilient};

#[async_trait::async_trait]
trait Api {
    async fn get(&self, c: &reqwest::Client) -> Result<u16, Error>;
}

struct Svc;

#[async_trait::async_trait]
impl Api for Svc {
    #[resilient(timeout = "1s")]
    async fn get(&self, c: &reqwest::Client) -> Result<u16, Error> {
        Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
    }
}

fn main() {}
