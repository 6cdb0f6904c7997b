// Unkeyed POSTs in the shapes services write them: a method of a client struct, a generic
// function, a method chosen by value; none with `.resilient()`. Each is refused, pointing at
// what makes it unsafe.
use resilience_runtime::{Error, resilient};

pub struct Payments {
    http: reqwest::Client,
    base: String,
}

impl Payments {
    #[resilient(timeout = "2s")]
    pub async fn charge(&self, amount: u64) -> Result<String, Error> {
        Ok(self
            .http
            .post(format!("{}/charges", self.base))
            .body(amount.to_string())
            .send()
            .await?
            .text()
            .await?)
    }
}

#[resilient]
pub async fn create<B: Into<reqwest::Body>>(c: &reqwest::Client, body: B) -> Result<(), Error> {
    c.post("http://127.0.0.1:1/orders").body(body).send().await?;
    Ok(())
}

#[resilient(max_attempts = 2)]
pub async fn by_value(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.request(reqwest::Method::POST, url)
        .send()
        .await?
        .status()
        .as_u16())
}

fn main() {}
