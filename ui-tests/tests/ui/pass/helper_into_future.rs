// A method of `self` awaited in a body whose method is inferred is watched as a helper: one
// that returns a builder awaited through `IntoFuture` (a database driver's query, an SDK's
// request) compiles as `.await` takes it.
use std::future::{Future, IntoFuture};
use std::pin::Pin;

use resilience_runtime::{Error, resilient};

struct Insert;

impl IntoFuture for Insert {
    type Output = Result<u64, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<u64, Error>> + Send>>;
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async { Ok(1) })
    }
}

struct Store {
    http: reqwest::Client,
}

impl Store {
    fn insert(&self) -> Insert {
        Insert
    }

    #[resilient(max_attempts = 2, retry_on = [connect])]
    async fn save_and_read(&self) -> Result<String, Error> {
        self.insert().await?;
        Ok(self.http.get("http://127.0.0.1:1/").send().await?.text().await?)
    }
}

fn main() {
    let _ = Store::save_and_read;
}
