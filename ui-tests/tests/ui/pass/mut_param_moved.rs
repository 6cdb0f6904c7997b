// A `&mut` parameter the body moves (handed to a generic function, or to a builder's
// `execute(conn)`), in a function that retries: each attempt gets a reborrow of its own, so
// the body compiles as it would unannotated.
use resilience_runtime::{Error, resilient};

struct Conn;

struct Query;

/// What a database crate's `execute` takes: a connection, or a transaction, by a trait.
trait Executor {}

impl Executor for &mut Conn {}

impl Query {
    async fn execute<E: Executor>(self, _: E) -> Result<u64, Error> {
        Ok(1)
    }
}

fn update(_: &str) -> Query {
    Query
}

fn write_to<W: std::io::Write>(mut w: W, bytes: &[u8]) {
    let _ = w.write_all(bytes);
}

#[resilient(timeout = "1s")]
async fn record(c: &reqwest::Client, conn: &mut Conn, log: &mut Vec<u8>) -> Result<u16, Error> {
    let status = c.get("http://127.0.0.1:1/").send().await?.status().as_u16();
    update("audit").execute(conn).await?;
    write_to(log, b"recorded");
    Ok(status)
}

struct Recorder {
    log: Vec<u8>,
}

impl Recorder {
    // `self` cannot be rebound: a body that moves it (into an `async move` block) reborrows
    // it by hand, as the README says.
    #[resilient(timeout = "1s")]
    async fn record(&mut self, c: &reqwest::Client) -> Result<u16, Error> {
        let this = &mut *self;
        let status = c.get("http://127.0.0.1:1/").send().await?.status().as_u16();
        async move { this.log.push(1) }.await;
        Ok(status)
    }
}

// A `mut` parameter that is a `&mut`: written through (`Write` for `&mut [u8]`) and moved on
// (`out = &mut out[n..]`), retried, with a fallback too.
#[resilient(timeout = "1s", fallback = fill_nothing)]
async fn fill(c: &reqwest::Client, mut out: &mut [u8]) -> Result<u16, Error> {
    use std::io::Write as _;
    let status = c.get("http://127.0.0.1:1/").send().await?.status().as_u16();
    let _ = out.write_all(b"ok");
    out = &mut out[..0];
    let _ = out;
    Ok(status)
}

async fn fill_nothing(_: &reqwest::Client, _: &mut [u8]) -> Result<u16, Error> {
    Ok(0)
}

fn main() {
    let _ = record;
    let _ = fill;
    let _ = Recorder::record;
}
