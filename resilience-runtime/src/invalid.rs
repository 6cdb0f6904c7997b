//! The error of a setting that breaks a rule of the rule book, at run time.

/// Why a hand-built policy is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPolicy(pub String);

impl std::fmt::Display for InvalidPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid resilience policy: {}", self.0)
    }
}

impl std::error::Error for InvalidPolicy {}
