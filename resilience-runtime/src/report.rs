//! What a call cost, for the caller: attempts, time waited, time taken.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::context::REPORT;

/// What one `#[resilient]` call cost, read with [`measure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallReport {
    /// The annotated function's full path.
    pub function: &'static str,
    /// Attempts that ran, 1 when the first one answered.
    pub attempts: u32,
    /// Time spent waiting rather than sending: backoff and `Retry-After` sleeps, and the wait
    /// for a bulkhead slot.
    pub waited: Duration,
    /// Time from the call's start to its answer.
    pub elapsed: Duration,
    /// Whether the call succeeded.
    pub succeeded: bool,
}

/// Runs `fut` and reports what the outermost `#[resilient]` call inside it cost: how many
/// attempts it took and how long it waited, success or failure, without threading anything
/// through the function's return type.
///
/// ```no_run
/// # use resilience_runtime::{resilient, Error};
/// # #[resilient(timeout = "1s")]
/// # async fn profile(http: &reqwest::Client) -> Result<String, Error> {
/// #     Ok(http.get("http://127.0.0.1:8080/me").send().await?.text().await?)
/// # }
/// # async fn run(http: reqwest::Client) {
/// let (profile, report) = resilience_runtime::measure(profile(&http)).await;
/// if let Some(r) = report {
///     println!("{} attempts, {:?} waiting", r.attempts, r.waited);
/// }
/// # }
/// ```
///
/// `None` when no annotated call finished inside `fut`. When it makes several in a row, the
/// last one to finish is reported (a nested call finishes before the one it is nested in); a
/// call its caller stopped waiting for (a `timeout` inside `fut`) ends there, reported failed
/// with the attempts it began, in place of a call nested in it, not of one at its own depth
/// that finished first (a `select!`'s winner, a `try_join!`'s first failure, a call made
/// before it in the same `fut`: that one is reported). A
/// call answered by its `fallback` is reported as it ended (failed, its attempts), not as the
/// fallback's own `#[resilient]` calls did.
pub async fn measure<F: Future>(fut: F) -> (F::Output, Option<CallReport>) {
    MEASURED.store(true, Ordering::Relaxed);
    REPORT
        .scope(Cell::new(None), async move {
            let out = fut.await;
            (out, REPORT.with(Cell::get).map(|(r, _)| r))
        })
        .await
}

/// Whether [`measure`] was ever called: until it is, a call does not look for its scope.
static MEASURED: AtomicBool = AtomicBool::new(false);

/// The report of the call whose fallback is about to run, if [`measure`] is watching: the
/// fallback's own `#[resilient]` calls end after it and would take its place, so the generated
/// code holds it in a [`Kept`] while the fallback runs, which puts it back when dropped: once
/// the fallback has answered, or when its caller gives up on it mid-way.
#[doc(hidden)]
#[inline]
pub fn kept() -> Kept {
    Kept(if MEASURED.load(Ordering::Relaxed) {
        REPORT.try_with(Cell::get).ok().flatten()
    } else {
        None
    })
}

/// A failed call's report, put back in [`measure`]'s place when dropped (see [`kept`]).
#[doc(hidden)]
#[derive(Debug)]
pub struct Kept(Option<(CallReport, u8)>);

impl Drop for Kept {
    #[inline]
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            let _ = REPORT.try_with(|c| c.set(Some(r)));
        }
    }
}

/// A call ended, at `depth` (0: outside any other call): its report takes the place.
#[inline]
pub(crate) fn record(report: impl FnOnce() -> (CallReport, u8)) {
    if MEASURED.load(Ordering::Relaxed) {
        let _ = REPORT.try_with(|r| r.set(Some(report())));
    }
}

/// A call its caller stopped waiting for, at `depth`: its report takes the place of one of a
/// call nested in it (deeper), not of a call at its depth that ended first (the branch of a
/// `select!` that won, a `try_join!`'s first failure; also one made before it, one after
/// another, which a count of every call's start would tell apart at a cost to every call).
pub(crate) fn record_cancelled(report: impl FnOnce() -> (CallReport, u8)) {
    if MEASURED.load(Ordering::Relaxed) {
        let _ = REPORT.try_with(|r| {
            let (new, depth) = report();
            if r.get().is_none_or(|(_, d)| d > depth) {
                r.set(Some((new, depth)));
            }
        });
    }
}
