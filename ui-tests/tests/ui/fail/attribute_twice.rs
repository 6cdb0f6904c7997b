use resilience_runtime::{Error, resilient};

// Written twice, each would retry around the other under one function name.
#[resilient(timeout = "1s")]
#[resilience_runtime::resilient(max_attempts = 2)]
async fn twice(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

mod renamed {
    use resilience_runtime::resilient as retry;
    use resilience_runtime::{Error, resilient};

    // Once under another name: the attribute above expands first, the second finds its output.
    #[resilient(timeout = "1s")]
    #[retry(max_attempts = 2)]
    async fn twice(c: &reqwest::Client) -> Result<u16, Error> {
        Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
    }
}

fn main() {}
