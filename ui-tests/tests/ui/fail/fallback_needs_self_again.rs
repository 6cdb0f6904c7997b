use resilience_runtime::{Error, resilient};

struct Api {
    http: reqwest::Client,
    last: String,
}

async fn cached(_api: &mut Api, _url: &str) -> Result<&'static str, Error> {
    Ok("cached")
}

impl Api {
    // Not retried, but with a fallback: returning a borrow of `&mut self`, which the
    // fallback needs again after the body.
    #[resilient(timeout = "1s", max_attempts = 1, fallback = cached_last)]
    async fn last(&mut self, url: &str) -> Result<&str, Error> {
        self.last = self.http.get(url).send().await?.text().await?;
        Ok(&self.last)
    }
}

async fn cached_last<'a>(api: &'a mut Api, url: &str) -> Result<&'a str, Error> {
    let _ = (cached(api, url).await, url);
    Ok(&api.last)
}

fn main() {}
