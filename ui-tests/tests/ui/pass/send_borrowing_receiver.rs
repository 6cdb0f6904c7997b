// The README's remedy for a `.send()` that borrows its receiver: `(&x).send()`.
#![deny(warnings)] // the remedy must compile clean: the rewrite drops the parentheses
use resilience_runtime::{Error, resilient};

struct Outbox {
    sent: u32,
}

impl Outbox {
    async fn send(&self) -> Result<u32, Error> {
        Ok(self.sent)
    }
}

#[resilient(method = GET)]
async fn flush(c: &reqwest::Client, outbox: &Outbox) -> Result<u32, Error> {
    let local = Outbox { sent: outbox.sent };
    let n = (&local).send().await?;
    let _ = c;
    Ok(n + local.sent)
}

fn main() {}
