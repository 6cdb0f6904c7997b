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

/// The client half of each established loopback connection to `port`, from the kernel's table:
/// its timer kind (`tr`: 2 while a keep-alive timer runs on an idle socket, 0 with none) and
/// when it fires, in clock ticks.
#[cfg(target_os = "linux")]
fn client_sockets_to(port: u16) -> Vec<(u8, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let remote_port = u16::from_str_radix(f[2].split(':').nth(1)?, 16).ok()?;
            // 01: ESTABLISHED.
            (remote_port == port && f[3] == "01").then(|| {
                let (tr, when) = f[5].split_once(':').unwrap();
                (
                    u8::from_str_radix(tr, 16).unwrap(),
                    u64::from_str_radix(when, 16).unwrap(),
                )
            })
        })
        .collect()
}

/// "TCP keep-alive": the settings' client arms the kernel's keep-alive timer on its idle pooled
/// socket at its `tcp_keepalive` (30 s), so a peer that vanished without a FIN (behind a NAT or
/// a load balancer that dropped the flow) is found out within a minute or so; a client built
/// without it has no such timer, or only the system's default, hours away (the control).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_settings_client_keeps_its_idle_sockets_alive() {
    assert_eq!(
        ClientSettings::DEFAULT.tcp_keepalive,
        Duration::from_secs(30)
    );
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let with = ClientSettings::DEFAULT.build().unwrap();
    with.get(server.url("/")).send().await.unwrap();
    let sockets = client_sockets_to(server.addr().port());
    assert_eq!(sockets.len(), 1, "{sockets:?}");
    let (timer, when) = sockets[0];
    assert_eq!(timer, 2, "a keep-alive timer: {sockets:?}");
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let without = reqwest::Client::builder()
        .tcp_keepalive(None)
        .build()
        .unwrap();
    without.get(server.url("/")).send().await.unwrap();
    let control = client_sockets_to(server.addr().port());
    assert_eq!(control.len(), 1, "{control:?}");
    assert!(
        control[0].0 == 0 || control[0].1 > 10 * when,
        "the settings' timer ({when} ticks) fires far sooner than the control's: {control:?}"
    );
    drop((with, without));
}
