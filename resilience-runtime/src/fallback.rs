//! Fallback: another function with the same signature, called with the same arguments when
//! the call fails for good, on every final failure or only on chosen kinds (`fallback_on`).
//! The macro checks the names at compile time; the compiler checks the signature (the call is
//! typed with the function's own return type, the error pointing at `fallback = …`).

use resilience_spec::fallback_on as on;

use crate::error::{Error, ErrorKind};
use crate::registry::PolicyState;

/// Whether a failure of `kind` of the function of `state` calls its fallback, under the
/// `fallback_on` mask. When it does, an info event says so, naming the function and policy
/// (the call's span has ended: the fallback runs after it).
pub(crate) fn applies(mask: u16, kind: ErrorKind, state: &'static PolicyState) -> bool {
    let called = applies_to(mask, kind);
    if called {
        let shared = state.resolve_compiled();
        crate::telemetry::fallback(shared, true);
        tracing::info!(
            function = shared.function,
            policy = shared.policy,
            kind = ?kind,
            "call failed: calling its fallback"
        );
    }
    called
}

/// `applies`, for a call its open breaker refused before it began: not when it is nested in
/// an attempt of a call run again after an earlier run may have carried out a request under
/// a key, and it is given its key by that call's body (`given_key`: the same key as in the
/// earlier run, whose request under it may have been carried out: the fallback's answer would
/// hide that), as for a call that ran ([`applies_after`]).
pub fn applies_refused(
    mask: u16,
    kind: ErrorKind,
    state: &'static PolicyState,
    given_key: bool,
) -> bool {
    if !applies_to(mask, kind) {
        return false;
    }
    if given_key && crate::context::with_attempt(|o| o.carried_before()).unwrap_or(false) {
        withheld(state, kind);
        return false;
    }
    applies(mask, kind, state)
}

/// The fallback is not called: counted and said.
fn withheld(state: &'static PolicyState, kind: ErrorKind) {
    let shared = state.resolve_compiled();
    crate::telemetry::fallback(shared, false);
    tracing::warn!(
        function = shared.function,
        policy = shared.policy,
        kind = ?kind,
        "call failed after its request may have been carried out: not calling its fallback, whose answer would hide that"
    );
}

/// `applies`, for a call that ran (`session`): not when one of its attempts may have carried
/// out a request that needs a key ([`Session::fallback_allowed`]): the call's error comes
/// back instead, and a warning says why.
///
/// [`Session::fallback_allowed`]: crate::session::Session::fallback_allowed
pub fn applies_after(
    session: &crate::session::Session,
    mask: u16,
    kind: ErrorKind,
    state: &'static PolicyState,
) -> bool {
    if !applies_to(mask, kind) {
        return false;
    }
    if !session.fallback_allowed() {
        withheld(state, kind);
        return false;
    }
    applies(mask, kind, state)
}

/// The mask's answer alone.
fn applies_to(mask: u16, kind: ErrorKind) -> bool {
    let bit = match kind {
        ErrorKind::Call => on::CALL,
        ErrorKind::AttemptTimeout => on::TIMEOUT,
        ErrorKind::DeadlineExceeded => on::DEADLINE,
        ErrorKind::CircuitOpen => on::CIRCUIT_OPEN,
        ErrorKind::BudgetExhausted => on::BUDGET_EXHAUSTED,
        ErrorKind::BulkheadFull => on::BULKHEAD_FULL,
        ErrorKind::RateLimited => on::RATE_LIMITED,
    };
    mask & bit != 0
}

/// The error a fallback returned (it failed too), in the function's error type: the failed
/// call's attempts ran before it, and it says so where it is the runtime's own [`Error`]
/// (bare, in an `io::Error`, boxed, or in an `anyhow::Error` or `eyre::Report`), through
/// [`Error::attempts`], its message saying the call failed first: a fallback's refusal (its
/// own breaker open) would otherwise say no attempt ran after the failed call's requests went
/// out. An error of another type is returned as the fallback made it. Dispatched on the type as
/// [`Probe`](crate::probe::Probe) is (`(&&&FallbackFailed::new(e, n)).__resilience_ran()`).
pub struct FallbackFailed<'a, E>(std::cell::Cell<Option<&'a mut E>>, u32);

impl<E> std::fmt::Debug for FallbackFailed<'_, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FallbackFailed")
    }
}

impl<'a, E> FallbackFailed<'a, E> {
    /// The fallback's error `e`, after a call whose `attempts` ran.
    pub fn new(e: &'a mut E, attempts: u32) -> Self {
        FallbackFailed(std::cell::Cell::new(Some(e)), attempts)
    }
}

fn ran(e: Option<&mut Error>, attempts: u32) {
    if let Some(e) = e {
        e.fallback_failed_after(attempts);
    }
}

/// The runtime's own error, bare or in an `io::Error`.
pub trait FellOwn {
    /// Writes the failed call's attempts into the fallback's error.
    fn __resilience_ran(self);
}
impl FellOwn for &&&FallbackFailed<'_, Error> {
    fn __resilience_ran(self) {
        ran(self.0.take(), self.1);
    }
}
impl FellOwn for &&&FallbackFailed<'_, std::io::Error> {
    fn __resilience_ran(self) {
        let e = self
            .0
            .take()
            .and_then(|e| e.get_mut()?.downcast_mut::<Error>());
        ran(e, self.1);
    }
}

/// `reqwest_middleware::Result<T>` functions: the runtime's own error travels as a
/// middleware's.
#[cfg(feature = "reqwest-middleware")]
impl FellOwn for &&&FallbackFailed<'_, reqwest_middleware::Error> {
    fn __resilience_ran(self) {
        let e = match self.0.take() {
            Some(reqwest_middleware::Error::Middleware(e)) => e.downcast_mut::<Error>(),
            _ => None,
        };
        ran(e, self.1);
    }
}

/// Boxed errors and error reports: the runtime's own found by downcasting.
pub trait FellBoxed {
    /// Writes the failed call's attempts into the fallback's error.
    fn __resilience_ran(self);
}
macro_rules! fell_boxed {
    ($($(#[$cfg:meta])* $t:ty),*) => {$(
        $(#[$cfg])*
        impl FellBoxed for &&FallbackFailed<'_, $t> {
            fn __resilience_ran(self) {
                ran(self.0.take().and_then(|e| e.downcast_mut::<Error>()), self.1);
            }
        }
    )*};
}
fell_boxed!(
    Box<dyn std::error::Error + Send + Sync>,
    Box<dyn std::error::Error + Send>,
    Box<dyn std::error::Error>,
    #[cfg(feature = "anyhow")]
    anyhow::Error,
    #[cfg(feature = "eyre")]
    eyre::Report
);

/// Any other type: returned as the fallback made it.
pub trait FellOther {
    /// Nothing to write into.
    fn __resilience_ran(self);
}
impl<E> FellOther for &FallbackFailed<'_, E> {
    fn __resilience_ran(self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_mask() {
        assert!(applies_to(on::ANY, ErrorKind::Call));
        assert!(applies_to(
            on::CIRCUIT_OPEN | on::DEADLINE,
            ErrorKind::DeadlineExceeded
        ));
        assert!(!applies_to(on::CIRCUIT_OPEN, ErrorKind::Call));
        assert!(!applies_to(on::CALL, ErrorKind::RateLimited));
    }

    /// The failed call's attempts reach the runtime's error however the fallback's error type
    /// holds it; another type is left as it is.
    #[test]
    #[allow(clippy::needless_borrow)] // The generated code's dispatch, as it is written there.
    fn a_fallbacks_error_counts_the_calls_attempts_where_it_is_the_runtimes() {
        fn refused() -> Error {
            Error::new(ErrorKind::CircuitOpen)
        }
        let mut bare = refused();
        (&&&FallbackFailed::new(&mut bare, 3)).__resilience_ran();
        assert_eq!(bare.attempts(), 3);
        let mut io = std::io::Error::other(refused());
        (&&&FallbackFailed::new(&mut io, 2)).__resilience_ran();
        assert_eq!(
            io.get_ref()
                .unwrap()
                .downcast_ref::<Error>()
                .unwrap()
                .attempts(),
            2
        );
        let mut boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(refused());
        (&&&FallbackFailed::new(&mut boxed, 4)).__resilience_ran();
        assert_eq!(boxed.downcast_ref::<Error>().unwrap().attempts(), 4);
        #[cfg(feature = "anyhow")]
        {
            let mut report = anyhow::Error::new(refused());
            (&&&FallbackFailed::new(&mut report, 5)).__resilience_ran();
            assert_eq!(report.downcast_ref::<Error>().unwrap().attempts(), 5);
        }
        let mut other = String::from("declined");
        (&&&FallbackFailed::new(&mut other, 5)).__resilience_ran();
        assert_eq!(other, "declined");
    }
}
