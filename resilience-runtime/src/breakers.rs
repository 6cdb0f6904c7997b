//! Breakers by hand, for runbooks: force one open or closed, reset it, read its state, by name.
//!
//! ```
//! use resilience_runtime::breakers;
//!
//! // During an incident: take the payment gateway out of the path, then put it back.
//! if let Ok(state) = breakers::force_open("pg") {
//!     println!("pg is now {}", state.state);
//! }
//! let _ = breakers::reset("pg");
//! ```
//!
//! A breaker exists once a call has used it; before that the name is unknown. A breaker no
//! `[breakers.NAME]` names (an inline one without `name`) goes by its function's full path.

use std::fmt;

pub use crate::breaker::{BreakerSnapshot, BreakerState};
use crate::registry;

/// No breaker of that name has been used in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownBreaker(pub String);

impl fmt::Display for UnknownBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let known: Vec<&str> = registry::all_breakers().iter().map(|(n, _)| *n).collect();
        write!(
            f,
            "no breaker named {:?} has been used in this process (known: {})",
            self.0,
            if known.is_empty() {
                "none yet".to_owned()
            } else {
                known.join(", ")
            }
        )
    }
}

impl std::error::Error for UnknownBreaker {}

fn with(
    name: &str,
    f: impl FnOnce(&crate::breaker::Breaker),
) -> Result<BreakerSnapshot, UnknownBreaker> {
    let b = registry::find_breaker(name).ok_or_else(|| UnknownBreaker(name.to_owned()))?;
    f(b);
    Ok(b.snapshot())
}

/// Holds the breaker open until [`reset`]: its calls fail fast with `CircuitOpen`.
pub fn force_open(name: &str) -> Result<BreakerSnapshot, UnknownBreaker> {
    with(name, |b| b.force_open())
}

/// Holds the breaker closed until [`reset`]: its calls go through and no failure opens it.
pub fn force_closed(name: &str) -> Result<BreakerSnapshot, UnknownBreaker> {
    with(name, |b| b.force_closed())
}

/// Ends any forcing: closed, with an empty window.
pub fn reset(name: &str) -> Result<BreakerSnapshot, UnknownBreaker> {
    with(name, |b| b.reset())
}

/// The breaker's state and counters.
pub fn state(name: &str) -> Result<BreakerSnapshot, UnknownBreaker> {
    with(name, |_| {})
}
