// A zero-argument `.send()` that borrows its receiver, on a variable: the rewrite that stamps
// the body's requests moves the receiver, so using it again does not compile. The README's
// remedy, `(&x).send()`, compiles (tests/ui/pass/send_borrowing_receiver.rs).
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
    let n = local.send().await?;
    let _ = c;
    Ok(n + local.sent)
}

fn main() {}
