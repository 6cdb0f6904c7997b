//! A call whose start and admission are apart by more than its time allows (a thread
//! preempted, a recorder slow to answer, a nested call started at the end of its outer
//! attempt): its rate limit still decides, and refuses it, rather than being skipped and the
//! call let through without a permit, to send with less than a tenth of its `timeout` left.
//! Driven as the generated code drives a session, on a paused clock.

use std::time::Duration;

use resilience_runtime::__private::{KeyArg, PolicyState, RateLimitSpec, RateLimitStore, Session};
use resilience_runtime::{ErrorKind, Policy, metrics};

static POLICY: Policy = Policy {
    function: "admission_window::call",
    name: "admission-window",
    timeout: Duration::from_secs(1),
    deadline: Duration::from_secs(1),
    max_attempts: 1,
    budget: None,
    rate_limit: Some((
        "admission-window-limit",
        RateLimitSpec {
            rate: 1,
            per: Duration::from_secs(3600),
            burst: 1,
            max_wait: Duration::from_millis(500),
            store: RateLimitStore::Local,
        },
    )),
    ..Policy::DEFAULT
};

static STATE: PolicyState = PolicyState::new();

#[tokio::test(start_paused = true)]
async fn a_call_admitted_past_its_last_tenth_is_refused_by_its_rate_limit() {
    // The one permit of the hour, spent.
    // (Taken as it begins, a permit being free: `admitted`.)
    let first = Session::begin(&POLICY, &STATE, KeyArg::None);
    assert!(first.admitted());
    drop(first);
    let before = metrics::rate_limit("admission-window-limit").expect("registered");
    // The second call begins, then is admitted 950 ms later: past its deadline less a tenth
    // of its timeout (900 ms).
    let mut second = Session::begin(&POLICY, &STATE, KeyArg::None);
    assert!(!second.admitted(), "no permit free: it waits");
    tokio::time::advance(Duration::from_millis(950)).await;
    let refused = second
        .admit()
        .await
        .expect_err("let through without a permit");
    assert_eq!(refused.kind(), ErrorKind::DeadlineExceeded, "{refused}");
    assert_eq!(refused.attempts(), 0);
    let after = metrics::rate_limit("admission-window-limit").expect("registered");
    assert_eq!(after.rejected, before.rejected + 1, "{after:?}");
    assert_eq!(after.admitted, before.admitted, "no permit: {after:?}");
}
