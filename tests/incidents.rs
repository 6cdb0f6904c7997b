//! The source documents' two incidents, end to end on 127.0.0.1, with the figures the tour shows;
//! every peer a task of the test's current-thread runtime, on a paused clock (as the tour runs
//! the same code).

use resilience::incidents::{Guard, retry_storm, retry_storm_on_a_slow_dependency, thread_pool};

#[tokio::test(start_paused = true)]
async fn a_slow_dependency_takes_down_unrelated_endpoints_without_a_policy() {
    let bare = thread_pool(Guard::None, 8).await;
    assert_eq!(bare.home_sent, 300);
    assert!(
        bare.home_share() < 0.5,
        "without a policy /home still answered {:.0}%: {bare:?}",
        bare.home_share() * 100.0
    );
    let guarded = thread_pool(Guard::Policy, 8).await;
    assert!(
        guarded.home_share() >= 0.99,
        "with the policy /home answered only {:.1}%: {guarded:?}",
        guarded.home_share() * 100.0
    );
    // The breaker and bulkhead keep most checkouts from even reaching B.
    assert!(
        guarded.b_requests < bare.b_requests,
        "{guarded:?} vs {bare:?}"
    );
    assert!(guarded.checkout_failed_fast > 0, "{guarded:?}");
    // Read from the breaker and the bulkhead themselves, as the tour reads them: each acted.
    let breaker = resilience_runtime::metrics::breaker("incident-b");
    assert!(
        breaker
            .as_ref()
            .is_some_and(|b| b.opened > 0 && b.rejected > 0),
        "the breaker in front of B opened and refused calls: {breaker:?}"
    );
    let bulkhead = resilience_runtime::metrics::bulkhead("incident-b");
    assert!(
        bulkhead.as_ref().is_some_and(|h| h.rejected > 0),
        "the bulkhead in front of B refused calls: {bulkhead:?}"
    );
}

/// The source document's own fix: a timeout alone. Every checkout ends within 5 units, so 10
/// units after a wave no thread of A is still busy with it, and `/home` keeps answering.
#[tokio::test(start_paused = true)]
async fn a_timeout_alone_frees_the_pool_before_the_next_wave() {
    let bare = thread_pool(Guard::None, 8).await;
    assert!(bare.busy_at_next_wave >= 100, "{bare:?}");
    let timed = thread_pool(Guard::TimeoutOnly, 8).await;
    assert_eq!(timed.busy_at_next_wave, 0, "{timed:?}");
    assert!(
        timed.home_share() >= 0.99,
        "with a timeout /home answered only {:.1}%: {timed:?}",
        timed.home_share() * 100.0
    );
    // Every checkout failed fast (B takes 60 units), none waited for B.
    assert_eq!(timed.checkout_ok, 0, "{timed:?}");
    assert_eq!(timed.checkout_failed_fast, timed.checkout_sent, "{timed:?}");
}

#[tokio::test(start_paused = true)]
async fn the_retry_budget_stops_a_retry_storm() {
    let naive = retry_storm(false, 300, 200).await;
    assert!(naive.amplification() >= 2.9, "naive retries: {naive:?}");
    let budgeted = retry_storm(true, 300, 200).await;
    assert!(
        budgeted.amplification() <= 1.2,
        "with the budget: {:.2}x {budgeted:?}",
        budgeted.amplification()
    );
    assert!(
        budgeted.amplification() > 1.0,
        "the budget still lets some retries through: {budgeted:?}"
    );
}

/// The same storm against a dependency that has become slow (every attempt times out): naive
/// retries triple what it receives, the budget holds it near one request per call.
#[tokio::test(start_paused = true)]
async fn the_retry_budget_stops_a_retry_storm_on_a_slow_dependency() {
    let naive = retry_storm_on_a_slow_dependency(false, 300, 200).await;
    assert!(naive.amplification() >= 2.9, "naive retries: {naive:?}");
    let budgeted = retry_storm_on_a_slow_dependency(true, 300, 200).await;
    assert!(
        budgeted.amplification() <= 1.2,
        "with the budget: {:.2}x {budgeted:?}",
        budgeted.amplification()
    );
}
