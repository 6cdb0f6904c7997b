// No retry: any method; by-value arguments need not be Clone and the body may move them (the
// expansion once looped back even without retries, and this failed to borrow-check).
use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

struct Payload(String);

#[resilient(max_attempts = 1)]
async fn charge(c: &reqwest::Client, body: Payload) -> Result<(), Error> {
    c.post("http://127.0.0.1:1/charges")
        .body(body.0)
        .resilient()
        .send()
        .await?;
    Ok(())
}

struct Api {
    http: reqwest::Client,
}

impl Api {
    #[resilient(max_attempts = 1)]
    async fn consume(self) -> Result<(), Error> {
        self.http
            .post("http://127.0.0.1:1/once")
            .resilient()
            .send()
            .await?;
        Ok(())
    }
}

fn main() {
    let _ = charge;
    let _ = Api::consume;
    let _ = Payload(String::new());
}
