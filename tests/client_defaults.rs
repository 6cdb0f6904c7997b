//! The default client settings against a server with gunicorn's 2 s keep-alive: a pooled
//! socket is never reused after such a server dropped it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use resilience_fault_server::{Action, FaultServer, Script};
use resilience_runtime::ClientSettings;

/// gunicorn's default `--keep-alive`.
const SERVER_KEEP_ALIVE: Duration = Duration::from_secs(2);

#[test]
fn the_default_pool_idle_timeout_is_below_common_servers_keep_alive() {
    assert!(ClientSettings::DEFAULT.pool_idle_timeout < SERVER_KEEP_ALIVE);
    assert!(ClientSettings::DEFAULT.pool_idle_timeout < ClientSettings::DEFAULT.connect_timeout);
}

#[tokio::test]
async fn calls_spaced_past_gunicorns_keep_alive_never_reuse_a_closed_socket() {
    // Regression: with the former 4 s default, half of the GETs spaced past 2 s failed with
    // "connection closed before message completed".
    //
    // The server models the race deterministically: a request arriving on a connection idle
    // for longer than the keep-alive crossed the server's FIN, and is dropped unanswered.
    let last: Arc<Mutex<HashMap<u64, tokio::time::Instant>>> = Arc::default();
    let server = FaultServer::start(Script::dynamic({
        let last = last.clone();
        move |seen| {
            let mut last = last.lock().unwrap();
            let idle = last
                .insert(seen.connection, seen.at)
                .map(|before| seen.at.duration_since(before));
            if idle.is_some_and(|idle| idle > SERVER_KEEP_ALIVE) {
                Action::close()
            } else {
                Action::ok()
            }
        }
    }))
    .await;
    let http = ClientSettings::DEFAULT.build().unwrap();
    for i in 0..2 {
        let res = http.get(server.url("/")).send().await;
        assert!(res.is_ok(), "call {i}: {res:?}");
        if i == 0 {
            tokio::time::sleep(SERVER_KEEP_ALIVE + Duration::from_millis(100)).await;
        }
    }
    let conns: Vec<u64> = server.requests().iter().map(|s| s.connection).collect();
    assert_eq!(conns.len(), 2);
    assert_ne!(
        conns[0], conns[1],
        "the idle socket was dropped by the client first"
    );
}
