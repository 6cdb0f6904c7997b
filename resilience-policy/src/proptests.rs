//! Random attributes and random policy files through the parse and validate paths.
//!
//! Properties: nothing panics; every inline error points at a token of the input (or, when the
//! input simply ends too early, at the call site, and moves onto the input once it goes on); a
//! failed expansion still emits the function as written; every problem found in a policy file
//! starts with `file:line:col:`.
//!
//! Outside a macro, proc-macro2 gives the call site the position 1:0 of an empty file, and every
//! text parsed here starts with two newlines, so "points at the input" is `line >= 3`.

use std::path::PathBuf;
use std::str::FromStr as _;

use proc_macro2::{Span, TokenStream, TokenTree};
use proptest::prelude::*;

use crate::config;
use crate::diag::Diags;
/// What the macro emits when the analysis fails: the function as written, then the errors
/// (its code generation is not needed to check where errors point).
mod entry {
    use proc_macro2::TokenStream;

    pub(super) fn resilient(args: TokenStream, item: TokenStream) -> TokenStream {
        let mut out = item.clone();
        match syn::parse2::<syn::ItemFn>(item) {
            Ok(f) => {
                if let Err(e) = crate::analysis::analyze(args, &f, None, None) {
                    out.extend(e.into_compile_error());
                }
            }
            Err(e) => out.extend(e.into_compile_error()),
        }
        out
    }
}
use crate::model::{
    BACKOFF_KEYS, BREAKER_KEYS, BUDGET_KEYS, BULKHEAD_KEYS, CLIENT_KEYS, INLINE_ONLY_KEYS, Method,
    POLICY_KEYS, Set, Settings,
};
use crate::validate::{check_policy, resolve_shared};
use crate::value::Origin;

const FUNCTIONS: &[&str] = &[
    "async fn call(c: &reqwest::Client, key: &str, order: Order) -> Result<String, Error> { \
     Ok(c.post(url).send().await?.text().await?) }",
    "async fn call(&self, id: u64) -> Result<String, Error> { \
     Ok(self.http.get(url).send().await?.text().await?) }",
    "async fn call(c: &reqwest::Client) -> Result<(), Error> { helper(c).await }",
    "fn call(self, body: Vec<u8>) -> u8 { c.put(url); 0 }",
];

/// Text that lexes into tokens located at line 3 and below.
fn located(text: &str) -> Option<TokenStream> {
    TokenStream::from_str(&format!("\n\n{text}")).ok()
}

fn is_call_site(span: Span) -> bool {
    span.start().line < 3
}

/// The spans and messages of the `compile_error!`s in an expansion.
fn errors_in(out: &TokenStream) -> Vec<(Span, String)> {
    let tokens: Vec<TokenTree> = out.clone().into_iter().collect();
    let mut found = Vec::new();
    for (i, tt) in tokens.iter().enumerate() {
        if let TokenTree::Ident(id) = tt
            && id == "compile_error"
        {
            let message = match tokens.get(i + 2) {
                Some(TokenTree::Group(g)) => g.stream().to_string(),
                _ => String::new(),
            };
            found.push((id.span(), message));
        }
    }
    found
}

fn known_key() -> impl Strategy<Value = String> {
    let mut keys: Vec<&'static str> = Vec::new();
    for list in [
        POLICY_KEYS,
        INLINE_ONLY_KEYS,
        BACKOFF_KEYS,
        BUDGET_KEYS,
        BREAKER_KEYS,
        BULKHEAD_KEYS,
        CLIENT_KEYS,
    ] {
        keys.extend_from_slice(list);
    }
    keys.extend_from_slice(&["timout", "name", "r#type", "self", "_", "crate", "retries"]);
    prop::sample::select(keys).prop_map(str::to_owned)
}

fn string_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "5s",
            "250ms",
            "1m",
            "5",
            "5 parsecs",
            "",
            "0s",
            "1µs",
            "99999999999999999999h",
            "auto",
            "none",
            "off",
            "POST",
            "get",
            "connect",
            "5xx",
            "503",
            "exponential",
            "full",
            "crate::x",
            "::a::b",
            "not a path",
            "a.b",
            "order.id",
            "pg",
            "Cargo.toml",
            "missing.toml",
            "src/lib.rs",
        ])
        .prop_map(str::to_owned),
        "[a-zé0-9 .:_-]{0,8}",
    ]
    .prop_map(|s| format!("{s:?}"))
}

fn scalar_value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => string_value(),
        2 => prop::sample::select(vec![
            "0", "1", "3", "10", "11", "404", "503", "599", "600", "18446744073709551615",
            "99999999999999999999999", "5ms", "2s", "3parsecs", "1u8", "0x10", "0.5", "1.5", "1e9",
            "2.5s", "-1", "-0.5", "true", "false", "'a'", "b\"x\"", "GET", "POST", "PUT", "auto",
            "connect", "reset", "timeout", "none", "constant", "equal", "order.id", "key",
            "self.id", "::my::reexport", "crate::x", "a::", "x.", "r#type",
        ])
        .prop_map(str::to_owned),
        1 => any::<u16>().prop_map(|n| n.to_string()),
    ]
}

fn value() -> impl Strategy<Value = String> {
    scalar_value().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec((known_key(), inner), 0..4).prop_map(|kv| {
                let body: Vec<String> = kv.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", body.join(", "))
            }),
        ]
    })
}

fn garbage() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "=", ",", ";", "::", "..", "#", "!", "@", "=>", "?", "-", "&", "()", "[]", "{}", "= =",
        ",,", "a b", "1 2", "\"s\" =", ". x", "# [x]",
    ])
    .prop_map(str::to_owned)
}

/// A value shaped like what a key takes, written inline (`toml = false`) or in the file.
fn duration(toml: bool) -> impl Strategy<Value = String> {
    let good = (
        0u32..3000,
        prop::sample::select(vec!["ms", "s", "m"]),
        any::<bool>(),
    )
        .prop_map(move |(n, unit, bare)| {
            if bare && !toml {
                format!("{n}{unit}")
            } else {
                format!("\"{n}{unit}\"")
            }
        });
    let bad = prop::sample::select(vec!["\"5\"", "\"5 parsecs\"", "5", "\"\"", "1.5"])
        .prop_map(str::to_owned);
    prop_oneof![12 => good, 1 => bad]
}

fn word(toml: bool, words: &'static [&'static str]) -> impl Strategy<Value = String> {
    (prop::sample::select(words), any::<bool>()).prop_map(move |(w, bare)| {
        if bare && !toml {
            w.to_owned()
        } else {
            format!("{w:?}")
        }
    })
}

/// Lines or entries with each key once (a repeated key is a TOML syntax error).
fn dedup(entries: Vec<String>) -> Vec<String> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for e in entries {
        let key = e.split(" = ").next().unwrap_or_default().to_owned();
        if !seen.contains(&key) {
            seen.push(key);
            out.push(e);
        }
    }
    out
}

fn table(entries: Vec<String>) -> String {
    format!("{{ {} }}", dedup(entries).join(", "))
}

/// `key = value` lines of a `[breakers.*]`, `[budgets.*]`, `[bulkheads.*]` or `[clients.*]`.
fn state_entries(kind: &'static str) -> BoxedStrategy<Vec<String>> {
    let one: BoxedStrategy<String> = match kind {
        "breaker" => prop_oneof![
            (0u32..15).prop_map(|n| format!("failure_rate = {}", f64::from(n) / 10.0)),
            (
                prop::sample::select(vec!["min_calls", "window", "half_open_calls"]),
                0u32..40
            )
                .prop_map(|(k, n)| format!("{k} = {n}")),
            duration(true).prop_map(|d| format!("open_for = {d}")),
        ]
        .boxed(),
        "budget" => prop_oneof![
            (0u32..15).prop_map(|n| format!("ratio = {}", f64::from(n) / 10.0)),
            (0u32..100).prop_map(|n| format!("min_per_sec = {n}")),
        ]
        .boxed(),
        "bulkhead" => prop_oneof![
            (0u32..100).prop_map(|n| format!("max_concurrent = {n}")),
            duration(true).prop_map(|d| format!("max_wait = {d}")),
        ]
        .boxed(),
        _ => prop_oneof![
            (
                prop::sample::select(vec![
                    "connect_timeout",
                    "pool_idle_timeout",
                    "tcp_keepalive"
                ]),
                duration(true)
            )
                .prop_map(|(k, d)| format!("{k} = {d}")),
            (0u32..64).prop_map(|n| format!("pool_max_idle_per_host = {n}")),
        ]
        .boxed(),
    };
    prop::collection::vec(one, 0..4).boxed()
}

/// A policy key with a value of the right shape (mostly right values, some wrong ones).
fn policy_entry(toml: bool) -> BoxedStrategy<String> {
    let kv = |k: &'static str, v: BoxedStrategy<String>| {
        v.prop_map(move |v| format!("{k} = {v}")).boxed()
    };
    let retry_item = prop_oneof![
        word(toml, &["connect", "reset", "timeout", "5xx", "conect"]),
        prop::sample::select(vec!["408", "429", "500", "502", "503", "504", "404", "200"])
            .prop_map(str::to_owned),
    ];
    let backoff_entry = prop_oneof![
        word(toml, &["exponential", "constant", "linear"]).prop_map(|w| format!("kind = {w}")),
        duration(toml).prop_map(|d| format!("initial = {d}")),
        duration(toml).prop_map(|d| format!("max = {d}")),
        (0u32..40).prop_map(|n| format!("multiplier = {}", f64::from(n) / 4.0)),
        word(toml, &["full", "equal", "decorrelated", "none", "half"])
            .prop_map(|w| format!("jitter = {w}")),
    ];
    let state = |kind: &'static str| {
        prop_oneof![
            Just("false".to_owned()),
            word(toml, &["pg", "payments", "missing"]),
            state_entries(kind).prop_map(table),
        ]
        .boxed()
    };
    let mut choices: Vec<BoxedStrategy<String>> = vec![
        kv(
            "method",
            word(
                toml,
                &["GET", "HEAD", "PUT", "DELETE", "POST", "PATCH", "BREW"],
            )
            .boxed(),
        ),
        kv("timeout", duration(toml).boxed()),
        kv("deadline", duration(toml).boxed()),
        kv("max_retry_after", duration(toml).boxed()),
        kv(
            "max_attempts",
            (0u32..12).prop_map(|n| n.to_string()).boxed(),
        ),
        kv(
            "retry_on",
            prop::collection::vec(retry_item, 0..5)
                .prop_map(|v| format!("[{}]", v.join(", ")))
                .boxed(),
        ),
        kv(
            "backoff",
            prop::collection::vec(backoff_entry, 0..4)
                .prop_map(table)
                .boxed(),
        ),
        kv(
            "idempotency_key",
            word(
                toml,
                &["auto", "none", "key", "order.id", "nosuch", "self.id"],
            )
            .boxed(),
        ),
        kv(
            "idempotent",
            prop::sample::select(vec!["true", "false"])
                .prop_map(str::to_owned)
                .boxed(),
        ),
        kv("budget", state("budget")),
        kv("breaker", state("breaker")),
        kv("bulkhead", state("bulkhead")),
        kv("client", word(toml, &["pg", "slow", "missing"]).boxed()),
    ];
    if !toml {
        choices.push(Just("idempotent".to_owned()).boxed());
        choices.push(kv(
            "policy",
            word(false, &["payments", "pg", "missing"]).boxed(),
        ));
        choices.push(kv(
            "config",
            word(false, &["missing.toml", "Cargo.toml", "src/lib.rs"]).boxed(),
        ));
        choices.push(kv(
            "crate",
            word(false, &["::resilience_runtime", "crate::rt", "a.b"]).boxed(),
        ));
    }
    prop::strategy::Union::new(choices).boxed()
}

fn entry_text() -> impl Strategy<Value = String> {
    prop_oneof![
        24 => policy_entry(false),
        6 => (known_key(), value()).prop_map(|(k, v)| format!("{k} = {v}")),
        2 => (known_key(), prop::collection::vec((known_key(), value()), 0..4)).prop_map(|(k, kv)| {
            let body: Vec<String> = kv.iter().map(|(k, v)| format!("{k} = {v}")).collect();
            format!("{k}({})", body.join(", "))
        }),
        1 => known_key(),
        1 => garbage(),
    ]
}

fn attribute_text() -> impl Strategy<Value = String> {
    let clean = prop::collection::vec(policy_entry(false), 0..4).prop_map(|e| dedup(e).join(", "));
    let chaotic = (
        prop::collection::vec(entry_text(), 0..7),
        prop::sample::select(vec![", ", ", ", ", ", " ", ",\n"]),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(entries, sep, trailing)| {
            let mut s = entries.join(sep);
            if trailing {
                s.push(',');
            }
            s
        });
    prop_oneof![3 => clean, 1 => chaotic]
}

fn toml_value() -> impl Strategy<Value = String> {
    let scalar = prop_oneof![
        string_value(),
        prop::sample::select(vec![
            "0",
            "3",
            "11",
            "-1",
            "0.5",
            "-0.5",
            "1e400",
            "nan",
            "inf",
            "true",
            "0x1F",
            "0o17",
            "1_000",
            "1979-05-27",
            "07:32:00",
            "'literal'",
            "\"\"\"multi\nline\"\"\"",
            "404",
            "503",
        ])
        .prop_map(str::to_owned),
    ];
    scalar.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec((known_key(), inner), 0..3).prop_map(|kv| {
                let body: Vec<String> = kv.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", body.join(", "))
            }),
        ]
    })
}

fn toml_line() -> impl Strategy<Value = String> {
    let section = prop::sample::select(vec![
        "defaults",
        "policies",
        "breakers",
        "budgets",
        "bulkheads",
        "clients",
        "polices",
        "extra",
    ]);
    let sub = prop::sample::select(vec!["", ".pg", ".payments", ".a.b", ".\"quoted name\""]);
    prop_oneof![
        2 => (section, sub).prop_map(|(s, n)| format!("[{s}{n}]")),
        1 => (prop::sample::select(vec!["policies", "breakers", "defaults"]))
            .prop_map(|s| format!("[[{s}]]")),
        6 => (known_key(), toml_value()).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => prop::sample::select(vec![
            "[", "]]", "= 1", "key =", "\"unterminated", "x = [1, 2", "\t", "# comment",
            "a.b = 1", "timeout = \"1s\"", "timeout = \"2s\"", "é = 1", "[policies.pg", "x = { y = ",
        ])
        .prop_map(str::to_owned),
    ]
}

/// `[header]` and its lines, each key once.
fn section(header: String, lines: Vec<String>) -> String {
    let mut out = vec![header];
    out.extend(dedup(lines));
    out.join("\n")
}

/// A policy file: mostly well-formed sections with right and wrong values, sometimes noise.
fn toml_text() -> impl Strategy<Value = String> {
    let names = || prop::sample::select(vec!["pg", "payments"]);
    let entries = || prop::collection::vec(policy_entry(true), 0..6);
    let shared = prop::sample::select(vec!["breaker", "budget", "bulkhead", "client"])
        .prop_flat_map(move |kind| {
            (names(), state_entries(kind))
                .prop_map(move |(n, e)| section(format!("[{kind}s.{n}]"), e))
        });
    (
        prop::option::of(entries().prop_map(|e| section("[defaults]".into(), e))),
        prop::collection::vec(entries(), 0..3).prop_map(|tables| {
            let names = ["payments", "pg", "reads"];
            let sections = tables.into_iter().zip(names);
            sections
                .map(|(e, n)| section(format!("[policies.{n}]"), e))
                .collect::<Vec<_>>()
        }),
        prop::collection::vec(shared, 0..4).prop_map(|sections| {
            let mut seen = Vec::new();
            sections
                .into_iter()
                .filter(|s| {
                    let header = s.lines().next().unwrap_or_default().to_owned();
                    let fresh = !seen.contains(&header);
                    seen.push(header);
                    fresh
                })
                .collect::<Vec<_>>()
        }),
        prop_oneof![
            3 => Just(Vec::new()),
            1 => prop::collection::vec((any::<prop::sample::Index>(), toml_line()), 1..4),
        ],
    )
        .prop_map(|(defaults, policies, shared, noise)| {
            let mut lines: Vec<String> =
                defaults.into_iter().chain(policies).chain(shared).collect();
            lines = lines.join("\n").split('\n').map(str::to_owned).collect();
            for (at, line) in noise {
                let i = at.index(lines.len() + 1);
                lines.insert(i, line);
            }
            lines.join("\n")
        })
}

const DISPLAY: &str = "resilience.toml";

/// `resilience.toml:LINE:COL: …` with a line inside the text.
fn assert_file_located(message: &str, text: &str) -> Result<(), TestCaseError> {
    let rest = message
        .strip_prefix(DISPLAY)
        .and_then(|r| r.strip_prefix(':'));
    let mut parts = rest.unwrap_or_default().splitn(3, ':');
    let line = parts.next().and_then(|l| l.parse::<usize>().ok());
    let col = parts.next().and_then(|c| c.parse::<usize>().ok());
    let tail = parts.next().unwrap_or_default();
    prop_assert!(
        line.is_some() && col.is_some() && tail.starts_with(' '),
        "not located: {message:?}\nin:\n{text}"
    );
    let lines = text.split('\n').count();
    prop_assert!(
        (1..=lines).contains(&line.unwrap_or(0)) && col.unwrap_or(0) >= 1,
        "position outside the file: {message:?}\nin:\n{text}"
    );
    Ok(())
}

fn messages(diags: Diags) -> Vec<String> {
    diags
        .into_error()
        .map(|e| e.into_iter().map(|e| e.to_string()).collect())
        .unwrap_or_default()
}

proptest! {
    // 256 cases by default; PROPTEST_CASES=20000 for a deeper run.
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn attributes_never_panic_and_errors_are_located(
        attr in attribute_text(),
        function in prop::sample::select(vec![FUNCTIONS[0], FUNCTIONS[1], FUNCTIONS[1], FUNCTIONS[1], FUNCTIONS[2], FUNCTIONS[3]]),
    ) {
        let Some(args) = located(&attr) else {
            return Ok(()); // Does not lex (an unbalanced delimiter): the compiler refuses it first.
        };
        let item = located(function).expect("the fixed functions lex");
        let out = entry::resilient(args.clone(), item.clone());
        let errors = errors_in(&out);
        if errors.is_empty() {
            return Ok(());
        }
        // Fail soft: the function as written comes first.
        prop_assert!(
            out.to_string().starts_with(&item.to_string()),
            "the function was not emitted unchanged for {attr:?}"
        );
        for (span, message) in &errors {
            if !is_call_site(*span) {
                continue;
            }
            // Only a parse that ran out of input may point at the call site, and then it is the
            // only error; more input moves the error onto a token.
            prop_assert_eq!(errors.len(), 1, "{} at the call site among others for {:?}", message, attr);
            let mut longer = args.clone();
            longer.extend(located("\n#").expect("lexes"));
            let again = errors_in(&entry::resilient(longer, item.clone()));
            prop_assert!(
                again.iter().all(|(s, _)| !is_call_site(*s)),
                "{message} stays at the call site for {attr:?} followed by more tokens: {again:?}"
            );
        }
    }

    #[test]
    fn policy_files_never_panic_and_problems_have_positions(text in toml_text()) {
        let cfg = config::parse(&text, PathBuf::from("/nonexistent/resilience.toml"), DISPLAY);
        for m in &cfg.errors {
            assert_file_located(m, &text)?;
        }
        // Layer [defaults] and each policy as the attribute does; every error about a file value
        // must say where in the file it is.
        let fb = Span::call_site();
        let mut base = Settings::default();
        let mut diags = Diags::default();
        if let Some(d) = &cfg.defaults {
            for (k, v) in &d.entries {
                base.apply(&mut diags, k, v, fb);
            }
        }
        let mut all = vec![base.clone()];
        for table in cfg.policies.values() {
            let mut s = base.clone();
            for (k, v) in &table.entries {
                s.apply(&mut diags, k, v, fb);
            }
            all.push(s);
        }
        for s in &all {
            resolve_shared(&mut diags, s, Some(&cfg), fb);
            // The cross-key rules mention origins in the text; they only must not panic.
            for method in [None, Some(Method::Post), Some(Method::Put), Some(Method::Get)] {
                let method = method.map(|m| Set { value: m, origin: Origin::Builtin });
                check_policy(&mut Diags::default(), s, method.as_ref(), fb);
            }
        }
        for m in messages(diags) {
            assert_file_located(&m, &text)?;
        }
    }
}

#[test]
fn the_call_site_check_tells_call_site_from_input() {
    assert!(is_call_site(Span::call_site()));
    let ts = located("timeout").unwrap();
    let first = ts.into_iter().next().unwrap();
    assert!(!is_call_site(first.span()));
    // A cut-short attribute errs at the call site; the property accepts it only because more
    // input moves the error.
    let item = located(FUNCTIONS[1]).unwrap();
    let errors = errors_in(&entry::resilient(located("timeout =").unwrap(), item));
    assert_eq!(errors.len(), 1);
    assert!(is_call_site(errors[0].0), "{errors:?}");
}
