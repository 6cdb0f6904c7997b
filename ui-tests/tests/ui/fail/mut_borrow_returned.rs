use resilience_runtime::{Error, resilient};

struct Api {
    http: reqwest::Client,
    last: String,
}

impl Api {
    // Retried, returning a borrow of `&mut self` (elided, then named).
    #[resilient(timeout = "1s")]
    async fn last(&mut self, url: &str) -> Result<&str, Error> {
        self.last = self.http.get(url).send().await?.text().await?;
        Ok(&self.last)
    }

    #[resilient(timeout = "1s")]
    async fn named<'a>(&'a mut self, url: &str) -> Result<&'a str, Error> {
        self.last = self.http.get(url).send().await?.text().await?;
        Ok(&self.last)
    }

    // A named `&'a mut self`, the return type's lifetime elided: still `'a`.
    #[resilient(timeout = "1s")]
    async fn named_elided<'a>(&'a mut self, url: &str) -> Result<&str, Error> {
        self.last = self.http.get(url).send().await?.text().await?;
        Ok(&self.last)
    }

    // A function type in the return type borrows nothing of `self`: accepted.
    #[resilient(timeout = "1s")]
    async fn matcher(&mut self, url: &str) -> Result<Box<dyn Fn(&str) -> bool + Send>, Error> {
        self.last = self.http.get(url).send().await?.text().await?;
        let last = self.last.clone();
        Ok(Box::new(move |s: &str| s == last))
    }

    // Returning a borrow of `&self` is fine, and so is an owned value from `&mut self`.
    #[resilient(timeout = "1s")]
    async fn shared(&self, url: &str) -> Result<&str, Error> {
        self.http.get(url).send().await?;
        Ok(&self.last)
    }
}

// A `&mut` parameter, the only reference: the elided lifetime is its.
#[resilient(timeout = "1s")]
async fn into(http: reqwest::Client, buf: &mut String) -> Result<&str, Error> {
    *buf = http.get("http://127.0.0.1:1/").send().await?.text().await?;
    Ok(buf.as_str())
}

fn main() {}
