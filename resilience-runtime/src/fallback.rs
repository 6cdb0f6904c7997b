//! Fallback: another function with the same signature, called with the same arguments when
//! the call fails for good, on every final failure or only on chosen kinds (`fallback_on`).
//! The macro checks the names at compile time; the compiler checks the signature (the call is
//! typed with the function's own return type, the error pointing at `fallback = …`).

use resilience_spec::fallback_on as on;

use crate::error::ErrorKind;

/// Whether a failure of `kind` calls the fallback, under the `fallback_on` mask.
pub fn applies(mask: u16, kind: ErrorKind) -> bool {
    let bit = match kind {
        ErrorKind::Call => on::CALL,
        ErrorKind::AttemptTimeout => on::TIMEOUT,
        ErrorKind::DeadlineExceeded => on::DEADLINE,
        ErrorKind::CircuitOpen => on::CIRCUIT_OPEN,
        ErrorKind::BudgetExhausted => on::BUDGET_EXHAUSTED,
        ErrorKind::BulkheadFull => on::BULKHEAD_FULL,
        ErrorKind::RateLimited => on::RATE_LIMITED,
    };
    let called = mask & bit != 0;
    if called {
        tracing::info!(kind = ?kind, "call failed: calling its fallback");
    }
    called
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_mask() {
        assert!(applies(on::ANY, ErrorKind::Call));
        assert!(applies(
            on::CIRCUIT_OPEN | on::DEADLINE,
            ErrorKind::DeadlineExceeded
        ));
        assert!(!applies(on::CIRCUIT_OPEN, ErrorKind::Call));
        assert!(!applies(on::CALL, ErrorKind::RateLimited));
    }
}
