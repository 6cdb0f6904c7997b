// `.execute(arg)` with one argument is taken for reqwest's `Client::execute(request)` whatever
// the receiver (a client may be reached any way), so a database builder's `execute(conn)` has
// its argument handed through the stamping: a `&mut` connection used again after it is
// reborrowed explicitly (`&mut *conn`), as the README says.
use resilience_runtime::{Error, resilient};

struct Conn;

struct Query;

impl Query {
    fn bind(self, _: u64) -> Query {
        self
    }
    async fn execute(self, _: &mut Conn) -> Result<u64, Error> {
        Ok(1)
    }
}

fn update(_: &str) -> Query {
    Query
}

#[resilient(max_attempts = 1)]
async fn record(c: &reqwest::Client, conn: &mut Conn, id: u64) -> Result<u16, Error> {
    update("orders").bind(id).execute(&mut *conn).await?;
    let query = update("ledger");
    query.execute(&mut *conn).await?;
    let status = c.get("http://127.0.0.1:1/").send().await?.status().as_u16();
    update("audit").execute(conn).await?;
    Ok(status)
}

fn main() {
    let _ = record;
}
