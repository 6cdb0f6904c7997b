// `Client::execute(&c, req)`, reqwest's written as a path, and a service's own `Client` whose
// `execute` takes two arguments and is no request: kept as written, the first stamped.
use resilience_runtime::{Error, resilient};

#[resilient(method = POST, idempotency_key = auto, timeout = "2s")]
async fn order(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let req = c.post(url).body("sku=42").build()?;
    Ok(reqwest::Client::execute(c, req).await?.status().as_u16())
}

mod jobs {
    pub struct Client;
    pub struct Job(pub u16);
    impl Client {
        pub async fn execute(_c: &Client, job: Job) -> Result<u16, resilience_runtime::Error> {
            Ok(job.0)
        }
    }
}

#[resilient(method = GET, timeout = "2s")]
async fn run(c: &reqwest::Client, jobs: &jobs::Client, url: &str) -> Result<u16, Error> {
    let done = jobs::Client::execute(jobs, jobs::Job(1)).await?;
    Ok(c.get(url).send().await?.status().as_u16() + done)
}

fn main() {
    let _ = order;
    let _ = run;
}
