// The future of an annotated function is `Send` whenever the same function's future without
// the attribute is: a value the body only reads (a `&mut self` field, a by-value argument) is
// held by the attempt as its own, not shared, so it need be `Send` only, not `Sync`. And a
// by-value key parameter the body does not read itself warns of nothing.
#![deny(warnings)]

use std::cell::Cell;

use resilience_runtime::{Error, resilient};

pub trait TokenSource {
    fn token(&self) -> String;
}

pub struct Api {
    http: reqwest::Client,
    auth: Box<dyn TokenSource + Send>,
    calls: Cell<u32>,
}

impl Api {
    #[resilient(timeout = "1s")]
    pub async fn me(&mut self) -> Result<String, Error> {
        self.calls.set(self.calls.get() + 1);
        Ok(self
            .http
            .get("http://127.0.0.1:1/me")
            .bearer_auth(self.auth.token())
            .send()
            .await?
            .text()
            .await?)
    }

    #[resilient(timeout = "1s", max_attempts = 1)]
    pub async fn once(&mut self, n: Cell<u32>) -> Result<u16, Error> {
        let url = format!("http://127.0.0.1:1/{}/{}", n.get(), self.auth.token());
        Ok(self.http.get(url).send().await?.status().as_u16())
    }
}

/// A by-value argument that is `Send` and `Clone`, not `Sync`.
#[resilient(timeout = "1s")]
pub async fn tagged<T: Clone + Send + std::fmt::Display>(
    c: &reqwest::Client,
    tag: T,
    seen: &mut Vec<Cell<u8>>,
) -> Result<u16, Error> {
    let n = seen.len();
    Ok(c.get(format!("http://127.0.0.1:1/{tag}/{n}"))
        .send()
        .await?
        .status()
        .as_u16())
}

/// A value that is `Send` and `Clone`, not `Sync`.
#[derive(Clone)]
pub struct Tag(Cell<u8>);

impl std::fmt::Display for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.get())
    }
}

/// Hedged: each attempt's closure owns its clone of the argument (it once held it by shared
/// reference across the round, and the future was `Send` only for a `Sync` argument).
#[resilient(timeout = "1s", hedge(delay = "50ms"))]
pub async fn tagged_hedged(c: &reqwest::Client, tag: Tag) -> Result<u16, Error> {
    Ok(c.get(format!("http://127.0.0.1:1/{tag}"))
        .send()
        .await?
        .status()
        .as_u16())
}

/// The key, a by-value parameter the body does not read: no `unused_variables` on its clone.
#[resilient(idempotency_key = key, timeout = "1s")]
pub async fn refund(c: &reqwest::Client, key: String, #[allow(unused_variables)] trace: String) -> Result<u16, Error> {
    Ok(c.post("http://127.0.0.1:1/refunds").send().await?.status().as_u16())
}

fn assert_send<F: Send>(f: F) -> F {
    f
}

pub fn spawn_them(mut api: Api, c: reqwest::Client) {
    tokio::spawn(async move {
        let _ = api.me().await;
        let _ = api.once(Cell::new(1)).await;
    });
    let c3 = c.clone();
    tokio::spawn(async move {
        let _ = assert_send(tagged_hedged(&c3, Tag(Cell::new(3)))).await;
    });
    let c2 = c.clone();
    tokio::spawn(async move {
        let mut seen = vec![Cell::new(1)];
        let _ = assert_send(tagged(&c2, Cell::new(3).get(), &mut seen)).await;
    });
    tokio::spawn(async move {
        let _ = assert_send(refund(&c, "k-1".to_owned(), String::new())).await;
    });
}

fn main() {
    let _ = spawn_them;
}
