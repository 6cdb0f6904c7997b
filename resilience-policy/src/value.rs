//! Values of policy keys, from the attribute or from `resilience.toml`, each with where it came from.

use std::fmt;

use proc_macro2::Span;

/// Where a value came from, for error messages that say how to fix it.
#[derive(Debug, Clone)]
pub enum Origin {
    /// The built-in default.
    Builtin,
    /// A key in `resilience.toml`.
    File {
        file: String,
        line: usize,
        col: usize,
        table: String,
    },
    /// Written in the attribute itself.
    Inline(Span),
    /// Inferred from the function body.
    Inferred { from: String, span: Span },
}

impl Origin {
    /// The span to point at: inline tokens, or `fallback` (the attribute or the function).
    pub fn span_or(&self, fallback: Span) -> Span {
        match self {
            Origin::Inline(s) | Origin::Inferred { span: s, .. } => *s,
            _ => fallback,
        }
    }

    pub fn is_inline(&self) -> bool {
        matches!(self, Origin::Inline(_))
    }

    /// Set in the policy file's `[defaults]`.
    pub fn is_from_defaults(&self) -> bool {
        matches!(self, Origin::File { table, .. } if table == "defaults")
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Builtin => f.write_str("built-in default"),
            Origin::File {
                file,
                line,
                col,
                table,
            } => write!(f, "{file}:{line}:{col} in [{table}]"),
            Origin::Inline(_) => f.write_str("inline in the attribute"),
            Origin::Inferred { from, .. } => write!(f, "inferred from `{from}` in the body"),
        }
    }
}

/// A policy value, in either syntax.
#[derive(Debug, Clone)]
pub enum Value {
    Str(String),
    Int(u64),
    /// An integer literal with a suffix, like `250ms` written inline.
    IntSuffixed(u64, String),
    Float(f64),
    /// A decimal literal with a suffix, like `1.5s` written inline, as written.
    FloatSuffixed(String),
    Bool(bool),
    /// A bare word or path (`POST`, `auto`, `connect`, `::my_crate::reexport`, `order.id`).
    Word(String),
    List(Vec<Located>),
    Table(Vec<(String, Located)>),
}

/// A value and where it came from.
#[derive(Debug, Clone)]
pub struct Located {
    pub value: Value,
    pub origin: Origin,
}

impl Located {
    pub fn describe(&self) -> &'static str {
        match &self.value {
            Value::Str(_) => "a string",
            Value::Int(_) | Value::IntSuffixed(..) => "an integer",
            Value::Float(_) | Value::FloatSuffixed(_) => "a number",
            Value::Bool(_) => "a boolean",
            Value::Word(_) => "a word",
            Value::List(_) => "a list",
            Value::Table(_) => "a table",
        }
    }

    /// A short rendering for messages.
    pub fn render(&self) -> String {
        match &self.value {
            Value::Str(s) => format!("{s:?}"),
            Value::Int(i) => i.to_string(),
            Value::IntSuffixed(i, s) => format!("{i}{s}"),
            Value::Float(x) => x.to_string(),
            Value::FloatSuffixed(t) => t.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Word(w) => w.clone(),
            Value::List(items) => {
                let v: Vec<String> = items.iter().map(Located::render).collect();
                format!("[{}]", v.join(", "))
            }
            Value::Table(kv) => {
                let v: Vec<String> = kv
                    .iter()
                    .map(|(k, v)| format!("{k} = {}", v.render()))
                    .collect();
                format!("{{ {} }}", v.join(", "))
            }
        }
    }

    /// A string or a bare word.
    pub fn as_text(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) | Value::Word(s) => Some(s),
            _ => None,
        }
    }
}

pub use resilience_spec::parse_duration;

/// The closest known name, for "did you mean".
pub fn did_you_mean<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (levenshtein(word, k), *k))
        .filter(|(d, k)| *d <= (k.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
        assert!(parse_duration("ms").is_err());
        assert!(
            parse_duration("1m30s")
                .unwrap_err()
                .contains("more than one unit")
        );
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.25ms"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("2.000000001s"), Ok(Duration::new(2, 1)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert!(
            parse_duration("1.s")
                .unwrap_err()
                .contains("without digits")
        );
        assert!(parse_duration("1.0000000001s").is_err());
        assert!(parse_duration(".5s").is_err());
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("timout", &["timeout", "deadline"]),
            Some("timeout")
        );
        assert_eq!(
            did_you_mean("max_attempt", &["max_attempts"]),
            Some("max_attempts")
        );
        assert_eq!(did_you_mean("zzz", &["timeout"]), None);
    }
}
