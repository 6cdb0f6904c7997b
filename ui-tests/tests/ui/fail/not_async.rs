use resilience_runtime::{Error, resilient};

#[resilient(method = GET)]
fn fetch(c: &reqwest::Client) -> Result<(), Error> {
    let _ = c;
    Ok(())
}

fn main() {}
