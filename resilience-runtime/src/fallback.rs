//! Fallback: another function with the same signature, called with the same arguments when
//! the call fails for good, on every final failure or only on chosen kinds (`fallback_on`).
//! The macro checks the names at compile time; the compiler checks the signature (the call is
//! typed with the function's own return type, the error pointing at `fallback = …`).

use resilience_spec::fallback_on as on;

use crate::error::ErrorKind;
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
}
