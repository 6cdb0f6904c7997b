// Fallbacks refused, each with its reason.
use resilience_runtime::{Error, resilient};

async fn wrong_return(_c: &reqwest::Client) -> Result<String, Error> {
    Ok(String::new())
}

// Not the same signature: the compiler says so at `fallback = …`.
#[resilient(fallback = wrong_return)]
async fn a(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

// fallback_on without a fallback; an unknown kind.
#[resilient(fallback_on = [circuit_open, breaker_open])]
async fn b(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

// The function itself.
#[resilient(fallback = c)]
async fn c(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

struct Api;

impl Api {
    // A method itself, as `Self::`.
    #[resilient(fallback = Self::ping)]
    async fn ping(&self, c: &reqwest::Client) -> Result<u16, Error> {
        Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
    }
}

async fn five(
    _c: &reqwest::Client,
    #[cfg(any())] _a: u8,
    #[cfg(any())] _b: u8,
    #[cfg(any())] _c2: u8,
    #[cfg(any())] _d: u8,
    #[cfg(any())] _e: u8,
) -> Result<u16, Error> {
    Ok(0)
}

// Five parameters under `#[cfg]`: 32 calls to write.
#[resilient(fallback = five)]
async fn f(
    c: &reqwest::Client,
    #[cfg(any())] _a: u8,
    #[cfg(any())] _b: u8,
    #[cfg(any())] _c2: u8,
    #[cfg(any())] _d: u8,
    #[cfg(any())] _e: u8,
) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}

fn main() {}
