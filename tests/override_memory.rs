//! Run-time overrides applied again and again (a reload on a timer, on every SIGHUP) keep no
//! more memory than the distinct policies they set: a call in flight holds its policy for the
//! life of the process, so each distinct one is kept once, not once per reload.

use resilience_fault_server::counting::{Counting, live_bytes};
use resilience_runtime::{Error, overrides, resilient};

#[global_allocator]
static GLOBAL: Counting = Counting;

#[resilient(method = GET, timeout = "1s", max_attempts = 2)]
async fn tuned(n: u64) -> Result<u64, Error> {
    Ok(n + 1)
}

#[resilient(method = GET, timeout = "1s", max_attempts = 2)]
async fn beside(n: u64) -> Result<u64, Error> {
    Ok(n + 2)
}

const INCIDENT: &str = r#"
[functions."override_memory::tuned"]
timeout = "3s"
retry_on = ["connect", "reset", 502, 503]

[functions."override_memory::beside"]
max_attempts = 3
"#;

const CALM: &str = r#"
[functions."override_memory::tuned"]
timeout = "2s"
"#;

#[tokio::test(flavor = "current_thread")]
async fn applying_the_same_files_again_keeps_no_more_memory() {
    // Known to the overrides once called.
    assert_eq!(tuned(1).await.unwrap(), 2);
    assert_eq!(beside(1).await.unwrap(), 3);
    // Each file once, so that what a reload keeps for good is made before counting.
    for text in [INCIDENT, CALM, INCIDENT] {
        overrides::apply_str(text, "incident.toml").unwrap_or_else(|e| panic!("{e}"));
    }
    let before = live_bytes();
    for _ in 0..1_000 {
        for text in [CALM, INCIDENT] {
            let changes =
                overrides::apply_str(text, "incident.toml").unwrap_or_else(|e| panic!("{e}"));
            assert!(
                !changes.is_empty(),
                "each file changes the other's settings"
            );
        }
        assert_eq!(tuned(1).await.unwrap(), 2);
    }
    let grown = live_bytes() - before;
    // Each reload kept a policy and a status list of its own before: 1.5 MB over these.
    assert!(
        grown < 16 * 1024,
        "2,000 reloads of two files kept {grown} bytes"
    );
    overrides::clear();
}
