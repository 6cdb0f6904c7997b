//! The `resilience` command, run as a user runs it: on the workspace's own examples, and on
//! small crates written for the test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resilience"))
        .args(args)
        .output()
        .expect("the command runs")
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The source of an annotated function `name` that sends a GET.
fn annotated_get(name: &str) -> String {
    format!(
        "#[resilience_runtime::resilient(timeout = \"1s\")]\npub async fn {name}(c: &reqwest::Client) -> Result<u16, resilience_runtime::Error> {{\n    Ok(c.get(\"http://127.0.0.1:1/\").send().await?.status().as_u16())\n}}\n"
    )
}

/// A throwaway crate with these files.
fn crate_with(name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("resilience-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n"),
    )
    .unwrap();
    for (path, body) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    dir
}

#[test]
fn list_shows_the_examples_effective_policies() {
    let out = run(&["list", workspace().to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let find = |f: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|x| x["function"] == f)
            .unwrap_or_else(|| panic!("{f} listed"))
            .clone()
    };
    // Hedging, fallback, the backoff's curve and jitter, `max_retry_after`: listed too.
    let hedged = find("tour::quote_hedged");
    assert_eq!(hedged["hedge"]["delay"], "50ms");
    assert_eq!(hedged["hedge"]["max"], 1);
    assert_eq!(hedged["backoff"]["jitter"]["value"], "equal");
    assert_eq!(hedged["max_retry_after"]["value"], "30s");
    let partner = find("tour::partner");
    assert_eq!(partner["fallback"]["function"], "partner_cached");
    assert_eq!(partner["fallback"]["on"][0], "rate_limited");
    let bundle = find("tour::Catalog::bundle");
    assert_eq!(bundle["method"]["value"], "GET");
    assert_eq!(bundle["method"]["from"], "inline in the attribute");
    assert_eq!(bundle["timeout"]["value"], "2s");
    // 3 × 2 s plus backoffs of at most 10 ms and 20 ms, under the 8 s deadline.
    assert_eq!(bundle["worst_case_ms"], 6030);
    // bundle calls item, which retries itself: one layer of retries, not 3 × 3.
    assert_eq!(bundle["requests_per_call_worst_case"], 3);
    let item = find("tour::Catalog::item");
    assert_eq!(item["method"]["from"], "inferred from `.get(` in the body");
    let keyed = find("tour::pay_keyed");
    assert_eq!(keyed["idempotency_key"]["value"], "auto");
    assert_eq!(keyed["max_attempts"]["value"], "4");
    let inventory = find("tour::inventory");
    assert_eq!(
        inventory["worst_case_ms"], 1000,
        "bounded by the 1 s deadline"
    );
    let adaptive = find("tour::stock_adaptive")["concurrency_limit"].clone();
    assert_eq!(adaptive["name"], "own");
    assert_eq!(adaptive["kind"], "aimd");
    assert_eq!(
        (&adaptive["initial"], &adaptive["min"], &adaptive["max"]),
        (&16.into(), &2.into(), &64.into())
    );
    assert_eq!(adaptive["latency"], "100ms");
    assert_eq!(adaptive["backoff"], 0.9);
    assert_eq!(adaptive["max_wait"], "1s");
    assert_eq!(adaptive["from"], "inline in the attribute");
    assert_eq!(
        find("tour::stock_plain")["concurrency_limit"],
        serde_json::Value::Null
    );
    // The breaker, bulkhead, budget and rate limit with their settings and where they came
    // from, as the table shows them, not their names alone.
    let stock = find("metrics_service::stock");
    assert_eq!(stock["bulkhead"]["name"], "inventory");
    assert_eq!(stock["bulkhead"]["max_concurrent"], 16);
    assert_eq!(stock["bulkhead"]["from"], "inline in the attribute");
    assert_eq!(stock["breaker"]["window"], 20);
    assert_eq!(stock["breaker"]["open_for"], "5s");
    assert_eq!(stock["breaker"]["window_for"], serde_json::Value::Null);
    let partner = find("tour::partner_shared")["rate_limit"].clone();
    assert_eq!(
        (&partner["rate"], &partner["per"], &partner["burst"]),
        (&20.into(), &"1s".into(), &2.into())
    );
    assert_eq!(partner["store"], "redis");
    assert_eq!(partner["from"], "inline in the attribute");
    let budget = find("tour::pay_keyed")["budget"].clone();
    assert_eq!(budget["name"], "own", "{budget}");
    assert!(budget["ratio"].is_number(), "{budget}");

    let table = run(&["list", workspace().to_str().unwrap()]);
    assert!(table.status.success());
    let t = text(&table);
    assert!(t.contains("tour::Catalog::quick_bundle"), "{t}");
    assert!(t.contains("aimd 2..=64 from 16, slow at 100ms"), "{t}");
    assert!(t.contains("where each setting came from"), "{t}");
    // What the table has no column for is listed below it, function by function.
    let rest = |f: &str| {
        t.lines()
            .find(|l| l.starts_with(&format!("  {f}: backoff ")))
            .unwrap_or_else(|| panic!("{f}'s rest of policy listed: {t}"))
            .to_owned()
    };
    let hedged = rest("tour::quote_hedged");
    assert!(hedged.contains("hedge after 50ms, at most 1"), "{hedged}");
    assert!(hedged.contains("equal jitter"), "{hedged}");
    assert!(hedged.contains("max_retry_after 30s"), "{hedged}");
    let partner = rest("tour::partner");
    assert!(
        partner.contains("fallback partner_cached on [rate_limited"),
        "{partner}"
    );
    assert!(!rest("tour::pay_keyed").contains("hedge"), "{t}");
}

#[test]
fn check_passes_on_the_workspace_and_fails_on_an_unsafe_post() {
    let out = run(&["check", workspace().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("every policy holds"));

    let dir = crate_with(
        "unsafe_post",
        &[(
            "src/lib.rs",
            "use resilience_runtime::{resilient, Error};\n\n#[resilient(timeout = \"2s\")]\npub async fn charge(c: &reqwest::Client) -> Result<(), Error> {\n    c.post(\"http://pg/charges\").send().await?;\n    Ok(())\n}\n",
        )],
    );
    let out = run(&["check", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("src/lib.rs:5:7: unsafe_post::charge: this POST could be retried after it may have reached the server"),
        "{t}"
    );
    assert!(t.contains("`idempotency_key = auto`"), "{t}");
    assert!(
        t.contains("1 annotated function in 1 file: 1 problem"),
        "the refused function is counted: {t}"
    );
}

/// A package that is also its workspace's root (`[package]` and `[workspace]` in one
/// manifest): its members are checked too, and an unsafe override for one of them refused.
#[test]
fn check_reads_the_members_of_a_package_that_is_a_workspace_root() {
    let dir = crate_with(
        "svcroot",
        &[
            (
                "Cargo.toml",
                "[package]\nname = \"svc\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[workspace]\nmembers = [\".\", \"crates/pay\"]\n",
            ),
            (
                "src/lib.rs",
                "#[resilience_runtime::resilient(timeout = \"1s\")]\npub async fn stock(c: &reqwest::Client) -> Result<u16, resilience_runtime::Error> {\n    Ok(c.get(\"http://x/\").send().await?.status().as_u16())\n}\n",
            ),
            (
                "crates/pay/Cargo.toml",
                "[package]\nname = \"pay\"\nversion = \"0.1.0\"\nedition = \"2024\"\n",
            ),
            (
                "crates/pay/src/lib.rs",
                "#[resilience_runtime::resilient(timeout = \"1s\", max_attempts = 1)]\npub async fn charge(c: &reqwest::Client) -> Result<(), resilience_runtime::Error> {\n    c.post(\"http://pg/charges\").send().await?;\n    Ok(())\n}\n",
            ),
        ],
    );
    let out = run(&["check", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("2 annotated functions in 2 files"),
        "{}",
        text(&out)
    );
    let file = dir.join("incident.toml");
    std::fs::write(&file, "[functions.\"pay::charge\"]\nmax_attempts = 3\n").unwrap();
    let out = run(&[
        "check",
        dir.to_str().unwrap(),
        "--overrides",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("pay::charge"), "{}", text(&out));
}

#[test]
fn check_reads_the_policy_file_and_points_into_it() {
    let dir = crate_with(
        "bad_file",
        &[
            (
                "src/lib.rs",
                "#[resilience_runtime::resilient(policy = \"reads\")]\npub async fn get(c: &reqwest::Client) -> Result<(), resilience_runtime::Error> {\n    c.get(\"http://x/\").send().await?;\n    Ok(())\n}\n",
            ),
            (
                "resilience.toml",
                "[policies.reads]\ntimeout = \"5 parsecs\"\n",
            ),
        ],
    );
    let out = run(&["check", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("resilience.toml:2:11: `parsecs` is not a duration unit"),
        "{t}"
    );
}

/// Sections no function uses yet are checked too: the compiler never reads them, so a
/// misspelled key, a bad value, an unsafe policy or a name that resolves to nothing would wait
/// there for the first function that uses it. Each is reported once, where it is; a clean file
/// with unused sections passes, and a used policy completed inline is not judged alone.
#[test]
fn check_reads_every_section_of_the_policy_file_used_or_not() {
    let lib = "#[resilience_runtime::resilient(policy = \"reads\")]\npub async fn get(c: &reqwest::Client) -> Result<(), resilience_runtime::Error> {\n    c.get(\"http://x/\").send().await?;\n    Ok(())\n}\n";
    let dir = crate_with(
        "unused_sections",
        &[
            ("src/lib.rs", lib),
            (
                "resilience.toml",
                "[policies.reads]\ntimeout = \"1s\"\n\n[policies.spare]\nmax_atempts = 3\ntimeout = \"abc\"\n\n[policies.charge]\nmethod = \"POST\"\nbreaker = \"pgg\"\n\n[breakers.pg]\nfailure_rat = 0.5\n",
            ),
        ],
    );
    let out = run(&["check", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    for expected in [
        "resilience.toml:5:15: unknown key `max_atempts`; did you mean `max_attempts`?",
        "resilience.toml:6:11: `abc` is not a duration",
        "unknown breaker `pgg`",
        "resilience.toml:13:15: unknown breaker key `failure_rat`; did you mean `failure_rate`?",
        "[policies.charge]",
        "5 problems",
    ] {
        assert!(t.contains(expected), "{expected}: {t}");
    }
    assert_eq!(t.matches("max_atempts").count(), 1, "{t}");

    // A used policy whose timeout only its function's inline deadline makes fit is the
    // compiler's to judge, with that deadline: not a problem of the file.
    let lib_long = lib.replace(
        "policy = \"reads\"",
        "policy = \"reads\", deadline = \"2m\"",
    );
    let clean = crate_with(
        "unused_clean",
        &[
            ("src/lib.rs", &lib_long),
            (
                "resilience.toml",
                "[defaults]\ntimeout = \"2s\"\n\n[policies.reads]\ntimeout = \"40s\"\n\n[policies.charge]\nmethod = \"POST\"\nidempotency_key = \"auto\"\nbreaker = \"pg\"\n\n[breakers.pg]\nfailure_rate = 0.5\n\n[bulkheads.spare]\nmax_concurrent = 4\n",
            ),
        ],
    );
    let out = run(&["check", clean.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));

    // Nor a used policy whose client, breaker and waits fit only the attempt timeout and the
    // deadline its function sets inline (the built-in 10s timeout and 30s deadline are
    // shorter than the client's connect, the breaker's slow call and the waits).
    let lib_inline = lib.replace(
        "policy = \"reads\"",
        "policy = \"reports\", timeout = \"30s\", deadline = \"90s\"",
    );
    let file = "[policies.reports]\nclient = \"wh\"\nbreaker = \"wh\"\nrate_limit = \"wh\"\n\n[clients.wh]\nconnect_timeout = \"12s\"\n\n[breakers.wh]\nslow_call_duration = \"20s\"\n\n[rate_limits.wh]\nrate = 5\nmax_wait = \"45s\"\n";
    let inline = crate_with(
        "used_inline_shared",
        &[("src/lib.rs", &lib_inline), ("resilience.toml", file)],
    );
    let out = run(&["check", inline.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    // The same policy used without them is refused, at the function, for each rule.
    let bare = crate_with(
        "used_bare_shared",
        &[
            ("src/lib.rs", &lib.replace("\"reads\"", "\"reports\"")),
            ("resilience.toml", file),
        ],
    );
    let out = run(&["check", bare.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    for expected in [
        "resilience.toml:7:19: connect_timeout (12s, resilience.toml:7:19 in [clients.wh])",
        "slow_call_duration (20s)",
        "max_wait",
    ] {
        assert!(t.contains(expected), "{expected}: {t}");
    }
}

/// A `#[path]` inside an inline module is relative to that module's directory, as the
/// compiler reads it: the unsafe POST in `src/outer/x.rs` is found, and refused.
#[test]
fn a_path_inside_an_inline_module_is_followed_as_the_compiler_does() {
    let dir = crate_with(
        "inline_path",
        &[
            (
                "src/lib.rs",
                "pub mod outer {\n    #[path = \"x.rs\"]\n    pub mod y;\n}\n",
            ),
            (
                "src/outer/x.rs",
                "#[resilience_runtime::resilient(timeout = \"1s\")]\npub async fn charge(c: &reqwest::Client) -> Result<(), resilience_runtime::Error> {\n    c.post(\"http://x/\").send().await?;\n    Ok(())\n}\n",
            ),
        ],
    );
    let out = run(&["check", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("inline_path::outer::y::charge"),
        "{}",
        text(&out)
    );
}

/// An impl of an alias declared in another file, reached by `use crate::…`, by `super::`,
/// and by a glob import: named after the type the alias stands for, as the runtime names it
/// (`shop::pg::Client::charge`); `list` once named it after the alias, and an override written
/// from the list applied to nothing.
#[test]
fn an_impl_of_an_alias_of_another_file_is_named_after_its_type() {
    let method = |name: &str| {
        format!(
            "    #[resilience_runtime::resilient(method = GET, timeout = \"1s\")]\n    pub async fn {name}(&self) -> Result<u16, resilience_runtime::Error> {{ Ok(1) }}\n"
        )
    };
    let dir = crate_with(
        "alias_files",
        &[
            (
                "src/lib.rs",
                "pub mod types;\npub mod pg;\npub mod glob;\npub mod nested;\n",
            ),
            (
                "src/types.rs",
                "pub struct Client<T>(pub T);\npub struct Pg;\npub type PgClient = Client<Pg>;\n",
            ),
            (
                "src/pg.rs",
                &format!(
                    "use crate::types::PgClient;\nimpl PgClient {{\n{}}}\n",
                    method("charge")
                ),
            ),
            (
                "src/glob.rs",
                &format!(
                    "use super::types::*;\nimpl PgClient {{\n{}}}\n",
                    method("refund")
                ),
            ),
            (
                "src/nested.rs",
                &format!("impl super::types::PgClient {{\n{}}}\n", method("status")),
            ),
        ],
    );
    let out = run(&["list", dir.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut listed: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["function"].as_str())
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            "alias_files::glob::Client::refund",
            "alias_files::nested::Client::status",
            "alias_files::pg::Client::charge",
        ]
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A `#[path]` on an inline module sets the directory of the files its own modules are in,
/// as the compiler reads them: `#[path = "dir"] mod m { mod x; }` is `dir/x.rs` beside the file
/// it is written in, `lib.rs` or a module's own file (`src/shop.rs`: `src/dir/x.rs`).
#[test]
fn a_path_on_an_inline_module_is_where_its_modules_files_are() {
    let dir = crate_with(
        "inline_dir",
        &[
            (
                "src/lib.rs",
                "#[path = \"elsewhere\"]\npub mod m {\n    pub mod x;\n}\npub mod shop;\n",
            ),
            (
                "src/shop.rs",
                "#[path = \"impls\"]\npub mod imp {\n    pub mod pg;\n}\n",
            ),
            (
                "src/impls/pg.rs",
                "#[resilience_runtime::resilient(timeout = \"1s\")]\npub async fn refund(c: &reqwest::Client) -> Result<(), resilience_runtime::Error> {\n    c.post(\"http://x/\").send().await?;\n    Ok(())\n}\n",
            ),
            (
                "src/elsewhere/x.rs",
                "#[resilience_runtime::resilient(timeout = \"1s\")]\npub async fn charge(c: &reqwest::Client) -> Result<(), resilience_runtime::Error> {\n    c.post(\"http://x/\").send().await?;\n    Ok(())\n}\n",
            ),
        ],
    );
    let out = run(&["check", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("inline_dir::m::x::charge"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("inline_dir::shop::imp::pg::refund"),
        "{}",
        text(&out)
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A policy of one name in two files: used from one (`config = "…"`), it is unused in the
/// other, and checked there alone (an unsafe one fails the check).
#[test]
fn a_policy_used_from_one_file_is_checked_alone_in_another() {
    let lib = "#[resilience_runtime::resilient(config = \"other.toml\", policy = \"payments\")]\npub async fn get(c: &reqwest::Client) -> Result<(), resilience_runtime::Error> {\n    c.get(\"http://x/\").send().await?;\n    Ok(())\n}\n";
    let dir = crate_with(
        "two_files",
        &[
            ("src/lib.rs", lib),
            ("other.toml", "[policies.payments]\ntimeout = \"1s\"\n"),
            (
                "resilience.toml",
                "[policies.payments]\ntimeout = \"10s\"\ndeadline = \"5s\"\n",
            ),
        ],
    );
    let out = run(&["check", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("resilience.toml"), "{}", text(&out));
}

#[test]
fn check_an_override_file_against_the_crate() {
    let dir = std::env::temp_dir().join(format!("resilience-cli-ov-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = check_overrides(
        &dir,
        "bad.toml",
        "[functions.\"tour::pay_hasty\"]\nmax_attempts = 3\n",
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("bad.toml:2:16: tour::pay_hasty (POST): this POST could be retried"),
        "{t}"
    );
    // An attempt timeout no longer above the adaptive limit's latency threshold.
    let out = check_overrides(
        &dir,
        "slow.toml",
        "[functions.\"tour::stock_adaptive\"]\ntimeout = \"80ms\"\n",
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains(
            "concurrency_limit latency (100ms) is not shorter than the attempt timeout (80ms)"
        ),
        "{t}"
    );

    let out = check_overrides(
        &dir,
        "good.toml",
        "[functions.\"tour::Catalog::item\"]\ntimeout = \"1s\"\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("tour::Catalog::item: timeout 500ms -> 1s"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("warning"), "{}", text(&out));

    // Sections that name nothing in the crate: said, with the likely one, not failed (one
    // file may serve several crates).
    let out = check_overrides(
        &dir,
        "stray.toml",
        "[functions.\"tour::item\"]\ntimeout = \"1s\"\n[policies.paymnets]\ntimeout = \"1s\"\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("[functions.\"tour::item\"] names no annotated function of this crate")
            && t.contains("did you mean tour::Catalog::item?"),
        "{t}"
    );
    assert!(
        t.contains("[policies.paymnets] is the policy of no annotated function"),
        "{t}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// An override that shortens a function's timeout to its breaker's `slow_call_duration`: the
/// runtime refuses such a file whole, so the check must fail it too (it once left the breaker
/// out of the policy it checked, and passed it).
#[test]
fn check_refuses_an_override_the_breakers_slow_call_rule_refuses() {
    let dir = crate_with(
        "slowcheck",
        &[(
            "src/lib.rs",
            r#"
use resilience_runtime::{resilient, Error};

#[resilient(
    timeout = "2s",
    breaker = { failure_rate = 0.5, min_calls = 10, window = 20, open_for = "30s", half_open_calls = 1, slow_call_duration = "1s" },
)]
pub async fn stock(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
}
"#,
        )],
    );
    let file = dir.join("incident.toml");
    std::fs::write(
        &file,
        "[functions.\"slowcheck::stock\"]\ntimeout = \"1s\"\n",
    )
    .unwrap();
    let out = run(&[
        "check",
        dir.to_str().unwrap(),
        "--overrides",
        file.to_str().unwrap(),
    ]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("slow_call_duration"), "{t}");
    // Within the rule: passed.
    std::fs::write(
        &file,
        "[functions.\"slowcheck::stock\"]\ntimeout = \"3s\"\n",
    )
    .unwrap();
    let out = run(&[
        "check",
        dir.to_str().unwrap(),
        "--overrides",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    std::fs::remove_dir_all(&dir).ok();
}

/// `resilience check` of the workspace with an override file `name` holding `text`.
fn check_overrides(dir: &Path, name: &str, text: &str) -> Output {
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    run(&[
        "check",
        workspace().to_str().unwrap(),
        "--overrides",
        file.to_str().unwrap(),
    ])
}

#[test]
fn bad_usage_is_exit_code_2() {
    assert_eq!(run(&[]).status.code(), Some(2));
    assert_eq!(run(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(run(&["list", "/nonexistent-dir"]).status.code(), Some(2));
    // An override file it cannot read: the command line, not the policies (which are fine).
    let missing = run(&[
        "check",
        workspace().to_str().unwrap(),
        "--overrides",
        "/nonexistent-dir/overrides.toml",
    ]);
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    assert!(
        text(&missing).contains("overrides.toml"),
        "{}",
        text(&missing)
    );
    // One that is there but not text (a binary file): the same.
    let dir = std::env::temp_dir().join(format!("resilience-cli-binary-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let binary = dir.join("overrides.toml");
    std::fs::write(&binary, [0xff, 0xfe, 0x00, 0x80]).unwrap();
    let unreadable = run(&[
        "check",
        workspace().to_str().unwrap(),
        "--overrides",
        binary.to_str().unwrap(),
    ]);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(unreadable.status.code(), Some(2), "{}", text(&unreadable));
    // A typo is reported as such, even where no crate is.
    let typo = run(&["lsit", "/nonexistent-dir"]);
    assert_eq!(typo.status.code(), Some(2));
    assert!(
        text(&typo).contains("unknown command lsit"),
        "{}",
        text(&typo)
    );
}

/// `#[resilient]` given twice is refused by the compiler (each would retry around the
/// other): by the check too, at the second.
#[test]
fn check_refuses_the_attribute_given_twice() {
    let lib = annotated_get("ping").replace(
        "pub async fn",
        "#[resilience_runtime::resilient(max_attempts = 2)]\npub async fn",
    );
    let dir = crate_with("twice", &[("src/lib.rs", &lib)]);
    let out = run(&["check", dir.to_str().unwrap()]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("src/lib.rs:2:1: twice::ping: #[resilient] is given twice"),
        "{t}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A workspace member whose manifest cannot be read is a crate the command cannot read:
/// exit 2, the others still checked and listed.
#[test]
fn a_member_it_cannot_read_is_exit_code_2() {
    let dir = crate_with(
        "unreadable_member",
        &[
            (
                "Cargo.toml",
                "[workspace]\nmembers = [\"good\", \"broken\"]\n",
            ),
            (
                "good/Cargo.toml",
                "[package]\nname = \"good\"\nversion = \"0.1.0\"\nedition = \"2024\"\n",
            ),
            ("good/src/lib.rs", &annotated_get("ping")),
            ("broken/Cargo.toml", "[package\nname = \"broken\"\n"),
        ],
    );
    for cmd in ["check", "list"] {
        let out = run(&[cmd, dir.to_str().unwrap()]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {t}");
        assert!(t.contains("broken/Cargo.toml"), "{cmd}: {t}");
        if cmd == "list" {
            assert!(t.contains("good::ping"), "{t}");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn help_is_the_usage_and_success() {
    for flag in ["--help", "-h", "help"] {
        let out = run(&[flag]);
        assert_eq!(out.status.code(), Some(0), "{flag}");
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("usage: resilience check"),
            "{flag}: {}",
            text(&out)
        );
    }
}

/// `resilience list --json` of the crate in `dir`: each function's worst-case requests per
/// call, by its path.
fn worst_cases(dir: &Path) -> impl Fn(&str) -> serde_json::Value {
    let out = run(&["list", dir.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    move |f: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|x| x["function"] == f)
            .unwrap_or_else(|| panic!("{f} listed"))["requests_per_call_worst_case"]
            .clone()
    }
}

#[test]
fn a_nested_failure_the_body_handles_multiplies_the_worst_case() {
    let dir = crate_with(
        "handled_nested",
        &[(
            "src/lib.rs",
            r#"use resilience_runtime::{resilient, Error};

#[resilient(timeout = "1s")]
pub async fn recs(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://recs/").send().await?.text().await?)
}

/// The failure ends the body at once: one layer of retries (`recs`'s retries fit in this
/// attempt's time).
#[resilient(timeout = "5s", deadline = "20s", method = GET)]
pub async fn propagated(c: &reqwest::Client) -> Result<String, Error> {
    let r = recs(c).await?;
    Ok(r)
}

/// The error converted on its way out ends the body at once too.
#[resilient(timeout = "5s", deadline = "20s", method = GET)]
pub async fn converted(c: &reqwest::Client) -> Result<String, Error> {
    let r = recs(c).await.map_err(|e| e)?;
    Ok(r)
}

/// The failure is handled and the body goes on: a later failure runs `recs` again.
#[resilient(timeout = "2s")]
pub async fn handled(c: &reqwest::Client) -> Result<String, Error> {
    let r = recs(c).await.unwrap_or_default();
    Ok(c.get("http://users/").send().await?.text().await? + &r)
}

/// Against a hanging dependency, each of its 3 attempts sends 2 hedges beside it.
#[resilient(timeout = "1s", deadline = "10s", hedge(delay = "100ms", max = 2))]
pub async fn hedged(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://recs/").send().await?.text().await?)
}

/// Hedged around a call that retries: one layer retries, but each of the 2 hedges runs
/// `recs` (3 attempts) again.
#[resilient(timeout = "5s", deadline = "10s", method = GET, max_attempts = 1, hedge(delay = "100ms", max = 2))]
pub async fn hedged_around(c: &reqwest::Client) -> Result<String, Error> {
    let r = recs(c).await?;
    Ok(r)
}
"#,
        )],
    );
    let worst = worst_cases(&dir);
    assert_eq!(worst("handled_nested::propagated"), 3);
    assert_eq!(worst("handled_nested::converted"), 3);
    assert_eq!(worst("handled_nested::handled"), 9);
    assert_eq!(worst("handled_nested::hedged"), 9);
    assert_eq!(worst("handled_nested::hedged_around"), 9);
}

/// A nested call that retries, but not every failure: a hang (outside its `retry_on`) ends
/// it after one attempt, and its caller retries it, each attempt running it again.
#[test]
fn a_nested_failure_the_callee_does_not_retry_is_its_callers_to_retry() {
    let dir = crate_with(
        "unretried_nested",
        &[(
            "src/lib.rs",
            r#"use resilience_runtime::{resilient, Error};

/// Retries a refused connection only; each attempt hedged once.
#[resilient(timeout = "1s", retry_on = [connect], hedge(delay = "200ms"))]
pub async fn quote(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://quotes/").send().await?.status().as_u16())
}

/// Retries its timeouts: each of its 3 attempts runs `quote`'s hedged attempt again.
#[resilient(timeout = "5s", deadline = "30s", method = GET)]
pub async fn page(c: &reqwest::Client) -> Result<u16, Error> {
    quote(c).await
}

/// Retries a refused connection only: its 503 is `deep`'s to retry.
#[resilient(timeout = "1s", retry_on = [connect])]
pub async fn price(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://prices/").send().await?.error_for_status()?.status().as_u16())
}

/// Retries its 503s, 5 attempts: each runs `price` again.
#[resilient(timeout = "5s", deadline = "60s", method = GET, max_attempts = 5, retry_on = [503])]
pub async fn deep(c: &reqwest::Client) -> Result<u16, Error> {
    price(c).await
}

/// A callee that retries every failure: one layer retries (its 3, not 5 × 3).
#[resilient(timeout = "1s")]
pub async fn stock(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://stock/").send().await?.error_for_status()?.status().as_u16())
}

#[resilient(timeout = "5s", deadline = "60s", method = GET, max_attempts = 5)]
pub async fn shelf(c: &reqwest::Client) -> Result<u16, Error> {
    stock(c).await
}
"#,
        )],
    );
    let worst = worst_cases(&dir);
    assert_eq!(worst("unretried_nested::quote"), 2);
    assert_eq!(worst("unretried_nested::page"), 6);
    assert_eq!(worst("unretried_nested::deep"), 5);
    assert_eq!(worst("unretried_nested::shelf"), 5);
}

/// Two annotated methods named `get`, and bodies that call a request builder's `.get(url)` and
/// a map's `.get(&k)`: those are not the annotated `get` (they are not awaited where they are
/// written), so nothing multiplies; awaited method calls and futures handed to `join!` still
/// count. The list once printed 3^8 requests per call here.
#[test]
fn a_method_call_counts_as_a_nested_call_only_when_awaited() {
    let dir = crate_with(
        "same_names",
        &[(
            "src/lib.rs",
            r#"use resilience_runtime::{resilient, Error};
use std::collections::HashMap;

pub mod users {
    use super::*;
    pub struct Client { pub http: reqwest::Client, pub cache: HashMap<String, String> }
    impl Client {
        #[resilient(timeout = "500ms")]
        pub async fn get(&self, k: &str) -> Result<String, Error> {
            let hit = self.cache.get(k).cloned().unwrap_or_default();
            Ok(self.http.get("http://users/").send().await?.text().await? + &hit)
        }
    }
}

pub mod orders {
    use super::*;
    pub struct Client { pub http: reqwest::Client }
    impl Client {
        #[resilient(timeout = "1s", max_attempts = 1)]
        pub async fn get(&self) -> Result<String, Error> {
            Ok(self.http.get("http://orders/").send().await?.text().await?)
        }
        /// An awaited method call: `get` runs inside each of the 3 attempts.
        #[resilient(timeout = "3s", method = GET)]
        pub async fn page(&self) -> Result<String, Error> {
            self.get().await
        }
        #[resilient(timeout = "1s")]
        pub async fn status(&self) -> Result<String, Error> {
            Ok(self.http.get("http://orders/status").send().await?.text().await?)
        }
        /// Futures handed to `join!`, awaited there: `status` retries inside the one attempt,
        /// twice over (two calls of it: 3 requests each).
        #[resilient(timeout = "3s", method = GET, max_attempts = 1)]
        pub async fn both(&self) -> Result<String, Error> {
            let (a, b) = tokio::join!(self.status(), self.status());
            Ok(a? + &b?)
        }
        /// Two calls whose failure the body handles and goes on: both run.
        #[resilient(timeout = "3s", method = GET, max_attempts = 1)]
        pub async fn twice(&self) -> Result<String, Error> {
            let a = self.status().await.unwrap_or_default();
            let b = self.status().await.unwrap_or_default();
            Ok(a + &b)
        }
    }
}
"#,
        )],
    );
    let worst = worst_cases(&dir);
    assert_eq!(worst("same_names::users::Client::get"), 3);
    assert_eq!(worst("same_names::orders::Client::get"), 1);
    assert_eq!(worst("same_names::orders::Client::page"), 3);
    assert_eq!(worst("same_names::orders::Client::both"), 6);
    assert_eq!(worst("same_names::orders::Client::twice"), 6);
}

/// A steep backoff the rule book accepts: the worst case is computed without overflow (the
/// delay stops growing at `max`) and bounded by the deadline.
#[test]
fn a_steep_backoff_is_listed_not_overflowed() {
    let dir = crate_with(
        "steep_backoff",
        &[(
            "src/lib.rs",
            r#"use resilience_runtime::{resilient, Error};

#[resilient(
    method = GET,
    timeout = "1s",
    deadline = "2m",
    max_attempts = 10,
    backoff(kind = "exponential", multiplier = 100, initial = "20s", max = "30s")
)]
pub async fn steep(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://x/").send().await?.text().await?)
}
"#,
        )],
    );
    let out = run(&["list", dir.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // 10 × 1 s + 20 s + 8 × 30 s = 270 s, past the 2-minute deadline.
    assert_eq!(v[0]["worst_case_ms"], 120_000, "{v}");
}

/// A constant backoff waits `initial` every time, longer than the default `max` or not: three
/// attempts of 1 s and two waits of 5 s are 13 s (it was listed as 7 s, each wait cut to the
/// 2 s `max` it never uses), and a breaker's `window` beside a `window_for` (ignored) is
/// refused, as the build refuses it.
#[test]
fn a_constant_backoff_longer_than_max_is_listed_whole() {
    let dir = crate_with(
        "patient_backoff",
        &[(
            "src/lib.rs",
            r#"use resilience_runtime::{resilient, Error};

#[resilient(method = GET, timeout = "1s", deadline = "30s", backoff(kind = constant, initial = "5s"))]
pub async fn patient(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://x/").send().await?.text().await?)
}
"#,
        )],
    );
    let out = run(&["list", dir.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["worst_case_ms"], 13_000, "{v}");
    std::fs::remove_dir_all(&dir).ok();

    let dir = crate_with(
        "both_windows",
        &[(
            "src/lib.rs",
            r#"use resilience_runtime::{resilient, Error};

#[resilient(method = GET, timeout = "1s", breaker(window = 5, window_for = "60s"))]
pub async fn guarded(c: &reqwest::Client) -> Result<String, Error> {
    Ok(c.get("http://x/").send().await?.text().await?)
}
"#,
        )],
    );
    let out = run(&["check", dir.to_str().unwrap()]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("not both: this `window` would be ignored"),
        "{t}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Methods whose impl has a lifetime, a generic type, a trait, and a trait's default method:
/// the names `list` gives them must be the names the runtime knows them by, or an override
/// written from the list applies to nothing.
mod names {
    use resilience_runtime::{Error, resilient};

    pub struct Api<'a>(pub &'a str);

    impl<'a> Api<'a> {
        #[resilient(method = GET, timeout = "1s", budget = false)]
        pub async fn get(&self) -> Result<usize, Error> {
            Ok(self.0.len())
        }
    }

    #[allow(async_fn_in_trait)]
    pub trait Fetch {
        async fn fetch(&self) -> Result<usize, Error>;
    }

    #[allow(async_fn_in_trait)]
    pub trait Greet {
        #[resilient(method = GET, timeout = "1s", budget = false)]
        async fn greet(&self) -> Result<usize, Error> {
            Ok(2)
        }
    }

    pub struct Svc<T>(pub T);

    impl<T> Greet for Svc<T> {}

    impl<T: Sync> Fetch for Svc<T> {
        #[resilient(method = GET, timeout = "1s", budget = false)]
        async fn fetch(&self) -> Result<usize, Error> {
            Ok(1)
        }
    }

    /// A type (and trait) of another module, its impls written here: the compiler names them
    /// `<impl model::Store>` and `<impl model::Load for model::Store>`.
    pub mod model {
        pub struct Store;

        #[allow(async_fn_in_trait)]
        pub trait Load {
            async fn load(&self) -> Result<usize, resilience_runtime::Error>;
        }

        #[allow(async_fn_in_trait)]
        pub trait Ping {
            async fn ping(&self) -> Result<usize, resilience_runtime::Error>;
        }

        pub type Depot = Store;
    }

    /// An impl of an alias written with its module (`model::Depot`): named after the type
    /// the alias in that module stands for.
    impl model::Depot {
        #[resilient(method = GET, timeout = "1s", budget = false)]
        pub async fn via_module(&self) -> Result<usize, Error> {
            Ok(10)
        }

        #[resilient(method = GET, timeout = "1s", budget = false)]
        pub async fn r#match(&self) -> Result<usize, Error> {
            Ok(14)
        }
    }

    /// A blanket impl (for every type of a bound): the compiler's type name writes the type
    /// parameter `_`.
    pub trait Http {}

    impl Http for model::Store {}

    #[allow(async_fn_in_trait)]
    pub trait Charge {
        async fn charge(&self) -> Result<usize, Error>;
    }

    impl<C: Http> Charge for C {
        #[resilient(method = GET, timeout = "1s", budget = false)]
        async fn charge(&self) -> Result<usize, Error> {
            Ok(11)
        }
    }

    /// Raw identifiers (a module and a function named after keywords), as the compiler's type
    /// names write them: without `r#`.
    pub mod r#async {
        use resilience_runtime::{Error, resilient};

        #[resilient(method = GET, timeout = "1s", budget = false)]
        pub async fn r#type() -> Result<usize, Error> {
            Ok(12)
        }
    }

    /// A function declared in a trait's default method: named after the method.
    #[allow(async_fn_in_trait)]
    pub trait Audit {
        async fn audit(&self) -> Result<usize, Error> {
            #[resilient(method = GET, timeout = "1s", budget = false)]
            async fn written() -> Result<usize, Error> {
                Ok(15)
            }
            written().await
        }
    }

    impl Audit for model::Store {}

    /// A trait implemented for slices of any type: the compiler writes `[_]`.
    #[allow(async_fn_in_trait)]
    pub trait Count {
        async fn count(&self) -> Result<usize, Error>;
    }

    impl<T: Sync> Count for [T] {
        #[resilient(method = GET, timeout = "1s", budget = false)]
        async fn count(&self) -> Result<usize, Error> {
            Ok(self.len())
        }
    }

    /// A type defined in a module shadows the name a glob brings (the parent's `Wide`).
    pub mod shadow {
        use super::*;

        pub struct Wide;

        impl Wide {
            #[resilient(method = GET, timeout = "1s", budget = false)]
            pub async fn shadowed(&self) -> Result<usize, Error> {
                Ok(17)
            }
        }
    }

    /// An alias reached through a module imported by name (`use super::aliases;`).
    pub mod aliases {
        pub type Depot2 = super::model::Store;
    }

    pub mod user {
        use super::aliases;
        use resilience_runtime::{Error, resilient};

        impl aliases::Depot2 {
            #[resilient(method = GET, timeout = "1s", budget = false)]
            pub async fn via_imported_module(&self) -> Result<usize, Error> {
                Ok(18)
            }
        }
    }

    /// An alias of the parent module, reached through a glob import.
    pub type Wide = Svc<i64>;

    pub mod glob {
        use super::*;

        impl Wide {
            #[resilient(method = GET, timeout = "1s", budget = false)]
            pub async fn via_glob(&self) -> Result<usize, Error> {
                Ok(13)
            }
        }
    }

    impl model::Store {
        #[resilient(method = GET, timeout = "1s", budget = false)]
        pub async fn put(&self) -> Result<usize, Error> {
            Ok(4)
        }

        /// A sync method whose `async` block declares the function: the closure in its type
        /// name shows it, and it is named after the method's whole path.
        #[allow(clippy::manual_async_fn)] // a sync method on purpose
        pub fn later(&self) -> impl std::future::Future<Output = Result<usize, Error>> {
            async move {
                #[resilient(method = GET, timeout = "1s", budget = false)]
                async fn in_block() -> Result<usize, Error> {
                    Ok(19)
                }
                in_block().await
            }
        }
    }

    impl model::Load for model::Store {
        #[resilient(method = GET, timeout = "1s", budget = false)]
        async fn load(&self) -> Result<usize, Error> {
            Ok(5)
        }
    }

    /// An impl of an alias, and of a trait imported under another name: named after the type
    /// and the trait they stand for, as the compiler names them.
    pub type Aliased = Svc<u16>;

    impl Aliased {
        #[resilient(method = GET, timeout = "1s", budget = false)]
        pub async fn via_alias(&self) -> Result<usize, Error> {
            Ok(8)
        }
    }

    use model::Ping as Reach;

    impl Reach for Svc<u32> {
        #[resilient(method = GET, timeout = "1s", budget = false)]
        async fn ping(&self) -> Result<usize, Error> {
            Ok(9)
        }
    }

    /// Functions declared in function bodies (a test's own helper): named after the function
    /// around them, so that two of one name in two functions have two paths.
    pub async fn outer() -> Result<usize, Error> {
        #[resilient(method = GET, timeout = "1s", budget = false)]
        async fn inner() -> Result<usize, Error> {
            Ok(6)
        }
        inner().await
    }

    /// Modules declared in function bodies: `module_path!()` leaves the function out, the
    /// path keeps it, so that two modules of one name in two functions have two paths.
    pub fn in_module_in_fn() -> impl std::future::Future<Output = Result<usize, Error>> {
        mod helpers {
            use resilience_runtime::{Error, resilient};
            #[resilient(method = GET, timeout = "1s", budget = false)]
            pub async fn get() -> Result<usize, Error> {
                Ok(20)
            }
        }
        helpers::get()
    }

    pub async fn in_module_in_async_fn() -> Result<usize, Error> {
        mod helpers {
            use resilience_runtime::{Error, resilient};
            #[resilient(method = GET, timeout = "1s", budget = false)]
            pub async fn get() -> Result<usize, Error> {
                Ok(21)
            }
        }
        helpers::get().await
    }

    impl model::Store {
        pub async fn around(&self) -> Result<usize, Error> {
            #[resilient(method = GET, timeout = "1s", budget = false)]
            async fn inner() -> Result<usize, Error> {
                Ok(7)
            }
            inner().await
        }
    }
}

#[test]
fn an_override_written_from_the_list_applies_to_methods_of_generic_and_trait_impls() {
    use names::model::{Load as _, Ping as _};
    use names::{Audit as _, Charge as _, Count as _, Fetch as _, Greet as _};

    let cli = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = run(&["list", cli.to_str().unwrap(), "--tests", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut listed: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["function"].as_str())
        .filter(|f| f.contains("::names::"))
        .map(str::to_owned)
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            "cli::names::<Store as Load>::load",
            "cli::names::<Svc as Fetch>::fetch",
            "cli::names::<Svc as Ping>::ping",
            "cli::names::<[_] as Count>::count",
            "cli::names::<_ as Charge>::charge",
            "cli::names::Api::get",
            "cli::names::Audit::audit::written",
            "cli::names::Greet::greet",
            "cli::names::Store::around::inner",
            "cli::names::Store::later::in_block",
            "cli::names::Store::match",
            "cli::names::Store::put",
            "cli::names::Store::via_module",
            "cli::names::Svc::via_alias",
            "cli::names::async::type",
            "cli::names::glob::Svc::via_glob",
            "cli::names::in_module_in_async_fn::helpers::get",
            "cli::names::in_module_in_fn::helpers::get",
            "cli::names::outer::inner",
            "cli::names::shadow::Wide::shadowed",
            "cli::names::user::Store::via_imported_module",
        ]
    );

    // The runtime learns a function's name at its first call.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        assert_eq!(names::Api("abc").get().await.unwrap(), 3);
        assert_eq!(names::Svc(0u8).fetch().await.unwrap(), 1);
        assert_eq!(names::Svc(0u8).greet().await.unwrap(), 2);
        assert_eq!(names::model::Store.put().await.unwrap(), 4);
        assert_eq!(names::model::Store.load().await.unwrap(), 5);
        assert_eq!(names::outer().await.unwrap(), 6);
        assert_eq!(names::Svc(0u16).via_alias().await.unwrap(), 8);
        assert_eq!(names::Svc(0u32).ping().await.unwrap(), 9);
        assert_eq!(names::model::Store.around().await.unwrap(), 7);
        assert_eq!(names::model::Store.via_module().await.unwrap(), 10);
        assert_eq!(names::model::Store.r#match().await.unwrap(), 14);
        assert_eq!(names::model::Store.charge().await.unwrap(), 11);
        assert_eq!(names::r#async::r#type().await.unwrap(), 12);
        assert_eq!(names::Svc(0i64).via_glob().await.unwrap(), 13);
        assert_eq!(names::model::Store.audit().await.unwrap(), 15);
        assert_eq!([1u8, 2][..].count().await.unwrap(), 2);
        assert_eq!(names::shadow::Wide.shadowed().await.unwrap(), 17);
        assert_eq!(names::model::Store.via_imported_module().await.unwrap(), 18);
        assert_eq!(names::model::Store.later().await.unwrap(), 19);
        assert_eq!(names::in_module_in_fn().await.unwrap(), 20);
        assert_eq!(names::in_module_in_async_fn().await.unwrap(), 21);
    });
    let file: String = listed
        .iter()
        .map(|f| format!("[functions.\"{f}\"]\ntimeout = \"2s\"\n"))
        .collect();
    let changes = resilience_runtime::overrides::apply_str(&file, "from-the-list.toml").unwrap();
    resilience_runtime::overrides::clear();
    let mut changed: Vec<&str> = changes.iter().map(|c| c.function).collect();
    changed.sort();
    assert_eq!(changed, listed, "{changes:?}");
}

/// The paths `list` prints are those `module_path!()` gives the runtime: a library under its
/// `[lib] name`, each binary under its own crate name (`src/bin/worker-job.rs` is
/// `worker_job`, a `[[bin]]` by its `name`), and at a virtual workspace's root every member
/// (it once printed `shop_client::bin::worker_job::run`, and "0 annotated functions" at a
/// workspace root).
#[test]
fn list_names_libraries_binaries_and_workspace_members_as_the_compiler_does() {
    let f = annotated_get;
    let manifest = "[package]\nname = \"shop-client\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[lib]\nname = \"shop\"\n\n[[bin]]\nname = \"api-server\"\npath = \"src/serve.rs\"\n\n[[bin]]\nname = \"cron\"\npath = \"./src/main.rs\"\n\n[[example]]\nname = \"demo-run\"\npath = \"examples/x.rs\"\n\n[[test]]\nname = \"it\"\npath = \"tests/x.rs\"\n";
    let dir = crate_with(
        "shopws",
        &[
            (
                "Cargo.toml",
                "[workspace]\nmembers = [\"crates/*\", \"tools\"]\n",
            ),
            ("crates/shop/Cargo.toml", manifest),
            (
                "crates/shop/src/lib.rs",
                &format!("pub mod pg;\n{}", f("charge")),
            ),
            ("crates/shop/src/pg.rs", &f("refund")),
            ("crates/shop/src/main.rs", &f("main_job")),
            ("crates/shop/src/serve.rs", &f("serve")),
            ("crates/shop/src/bin/worker-job.rs", &f("run")),
            (
                "crates/shop/src/bin/sweeper/main.rs",
                &format!("mod batch;\n{}", f("sweep")),
            ),
            ("crates/shop/src/bin/sweeper/batch.rs", &f("one")),
            ("crates/shop/examples/x.rs", &f("show")),
            ("crates/shop/tests/x.rs", &f("suite")),
            (
                "tools/Cargo.toml",
                "[package]\nname = \"tools\"\nversion = \"0.1.0\"\nedition = \"2024\"\n",
            ),
            ("tools/src/lib.rs", &f("ping")),
        ],
    );
    let out = run(&["list", dir.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut listed: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["function"].as_str())
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            "api_server::serve",
            "cron::main_job",
            "demo_run::show",
            "shop::charge",
            "shop::pg::refund",
            "sweeper::batch::one",
            "sweeper::sweep",
            "tools::ping",
            "worker_job::run",
        ]
    );
    // A `[[test]]` (and `[[example]]`) with a path of its own is named after its `name`.
    let out = run(&["list", dir.to_str().unwrap(), "--tests", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tests: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["function"].as_str())
        .filter(|f| f.ends_with("::suite"))
        .collect();
    assert_eq!(tests, ["it::suite"]);
    std::fs::remove_dir_all(&dir).ok();
}

/// `[package.metadata.resilience] config = "…"` names the policy file instead of
/// `resilience.toml` beside `Cargo.toml` (README, "Policy file").
#[test]
fn the_policy_file_named_in_package_metadata_is_read() {
    let dir = crate_with(
        "metadata_config",
        &[
            (
                "Cargo.toml",
                "[package]\nname = \"metadata_config\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[package.metadata.resilience]\nconfig = \"policy/outbound.toml\"\n",
            ),
            (
                "policy/outbound.toml",
                "[policies.reads]\ntimeout = \"1500ms\"\nmax_attempts = 2\n",
            ),
            (
                "src/lib.rs",
                "#[resilience_runtime::resilient(policy = \"reads\")]\npub async fn get(c: &reqwest::Client) -> Result<String, resilience_runtime::Error> {\n    Ok(c.get(\"http://x/\").send().await?.text().await?)\n}\n",
            ),
        ],
    );
    let out = run(&["list", dir.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let f = &v[0];
    assert_eq!(f["timeout"]["value"], "1500ms", "{f}");
    assert_eq!(f["max_attempts"]["value"], "2", "{f}");
    let from = f["timeout"]["from"].as_str().unwrap_or_default();
    assert!(from.contains("outbound.toml"), "{f}");
}

/// `resilience list | head`: a reader that goes away early ends the command quietly (as a
/// command killed by SIGPIPE, exit 141), not with a panic about the broken pipe.
#[test]
fn a_reader_that_goes_away_early_is_no_panic() {
    use std::io::Read as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_resilience"))
        .args(["list", workspace().to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read one byte, then hang up.
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    out.read_exact(&mut first).unwrap();
    drop(out);
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(status.code(), Some(101), "{err}");
}

/// A workspace whose members share one policy file: a policy one member uses with a deadline of
/// its own (`slow`, 40 s under a 2 min deadline) is not judged alone because another member
/// does not use it; a problem in the shared file is reported once, named from the root.
#[test]
fn a_policy_file_shared_by_a_workspaces_members_is_checked_once_against_them_all() {
    let member = |name: &str, policy: &str, extra: &str| {
        (
            format!("crates/{name}/src/lib.rs"),
            format!(
                "#[resilience_runtime::resilient(policy = \"{policy}\"{extra})]\npub async fn get(c: &reqwest::Client) -> Result<(), resilience_runtime::Error> {{\n    c.get(\"http://x/\").send().await?;\n    Ok(())\n}}\n"
            ),
        )
    };
    let manifest = |name: &str| {
        (
            format!("crates/{name}/Cargo.toml"),
            format!(
                "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[package.metadata.resilience]\nconfig = \"../../resilience.toml\"\n"
            ),
        )
    };
    let (a_src, b_src) = (
        member("a", "slow", ", deadline = \"2m\""),
        member("b", "fast", ""),
    );
    let (a_toml, b_toml) = (manifest("a"), manifest("b"));
    let write = |policies: &str| {
        let dir = crate_with(
            "shared-file",
            &[
                (a_src.0.as_str(), a_src.1.as_str()),
                (b_src.0.as_str(), b_src.1.as_str()),
                (a_toml.0.as_str(), a_toml.1.as_str()),
                (b_toml.0.as_str(), b_toml.1.as_str()),
                ("resilience.toml", policies),
            ],
        );
        std::fs::write(
            dir.join("Cargo.toml"),
            "[workspace]\nmembers = [\"crates/*\"]\n",
        )
        .unwrap();
        dir
    };
    let dir = write("[policies.slow]\ntimeout = \"40s\"\n\n[policies.fast]\ntimeout = \"1s\"\n");
    let out = run(&["check", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    // A problem of the shared file's own: once, named from the root.
    let dir = write(
        "[policies.slow]\ntimeout = \"40s\"\n\n[policies.fast]\ntimeout = \"1s\"\n\n[policies.unused]\nmax_attempts = 0\n",
    );
    let out = run(&["check", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let printed = text(&out);
    assert_eq!(printed.matches("max_attempts = 0").count(), 1, "{printed}");
    assert!(printed.contains("resilience.toml:"), "{printed}");
    assert!(!printed.contains("../"), "{printed}");
}

/// Layered clients whose methods of one name call each other (`self.next().fetch(k)`), eight
/// of them: each function's figure is worked out once, so `list` answers at once (it once
/// walked every path through them, and took minutes from five on).
#[test]
fn layered_methods_of_one_name_are_listed_at_once() {
    let layer = |i: usize| {
        format!(
            "pub mod m{i} {{ use super::*; pub struct Client;\nimpl Client {{\n    #[resilient(timeout = \"1s\", method = GET, max_attempts = 2)]\n    pub async fn fetch(&self, k: &str) -> Result<String, Error> {{ self.next().fetch(k).await }}\n}} }}\n"
        )
    };
    let src: String = std::iter::once("use resilience_runtime::{resilient, Error};\n".to_owned())
        .chain((0..8).map(layer))
        .collect();
    let dir = crate_with("layered", &[("src/lib.rs", &src)]);
    // Bounded: a command still walking after 20 s is killed, and the test fails.
    let mut child = Command::new(env!("CARGO_BIN_EXE_resilience"))
        .args(["list", dir.to_str().unwrap(), "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(20) {
            child.kill().unwrap();
            panic!("still listing after 20 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 8);
}

/// The worst-case time `list` prints is at least what the runtime can take: a hedged round
/// lasts until its last hedge's own timeout, decorrelated jitter draws up to three times the
/// previous delay, and a bulkhead's wait counts against the deadline too, as a shared rate
/// limit's wait for Redis's answer does.
#[test]
fn the_worst_case_time_counts_hedges_decorrelated_jitter_and_waits() {
    let dir = crate_with(
        "worst_time",
        &[(
            "src/lib.rs",
            r#"use resilience_runtime::{resilient, Error};

#[resilient(method = GET, timeout = "1s", deadline = "30s", max_attempts = 3,
            hedge(delay = "500ms", max = 2),
            backoff(initial = "10ms", max = "10ms", jitter = none))]
pub async fn hedged(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://x/").send().await?.status().as_u16())
}

#[resilient(method = GET, timeout = "1s", deadline = "30s", max_attempts = 4,
            backoff(initial = "100ms", max = "2s", jitter = decorrelated))]
pub async fn decorrelated(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://x/").send().await?.status().as_u16())
}

#[resilient(method = GET, timeout = "1s", deadline = "30s", max_attempts = 1,
            bulkhead(max_concurrent = 2, max_wait = "5s"))]
pub async fn waits(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://x/").send().await?.status().as_u16())
}

#[resilient(method = GET, timeout = "1s", deadline = "30s", max_attempts = 1,
            rate_limit(rate = 10, max_wait = "2s", store = "redis"))]
pub async fn shared_limit(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://x/").send().await?.status().as_u16())
}
"#,
        )],
    );
    let out = run(&["list", dir.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ms = |f: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|x| x["function"] == format!("worst_time::{f}"))
            .unwrap_or_else(|| panic!("{f} listed"))["worst_case_ms"]
            .as_u64()
            .unwrap()
    };
    // 3 rounds of 1 s + 2 × 500 ms, and two 10 ms backoffs.
    assert_eq!(ms("hedged"), 6_020);
    // 4 × 1 s, and backoffs of up to 300 ms, 900 ms, then 2 s (the max).
    assert_eq!(ms("decorrelated"), 7_200);
    // 5 s for a slot, then the attempt.
    assert_eq!(ms("waits"), 6_000);
    // Up to 250 ms for Redis's answer, then the 2 s `max_wait` for a permit, then the attempt.
    assert_eq!(ms("shared_limit"), 3_250);
}

/// Against a dependency that fails (it hangs: every attempt times out; or it answers a 503 at
/// once): a POST whose policy retries only connect failures sends once, a GET or a keyed POST
/// as many times as its attempts (all of them against a fast failure, as many as fit in the
/// deadline against a hang).
#[test]
fn requests_per_call_to_a_hanging_dependency_follow_the_retry_decision() {
    let dir = crate_with(
        "hanging",
        &[(
            "src/lib.rs",
            r#"use resilience_runtime::{resilient, Error};

#[resilient(timeout = "1s", max_attempts = 3, retry_on = [connect])]
pub async fn charge(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.post("http://x/").send().await?.status().as_u16())
}

#[resilient(timeout = "1s", max_attempts = 3, idempotency_key = auto)]
pub async fn charge_keyed(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.post("http://x/").send().await?.status().as_u16())
}

#[resilient(timeout = "1s", max_attempts = 3)]
pub async fn read(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://x/").send().await?.status().as_u16())
}

/// Its first attempt takes the whole deadline when it hangs: no retry begins; a fast 503 is
/// retried twice.
#[resilient(timeout = "5s", deadline = "5s", max_attempts = 3)]
pub async fn read_within(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://x/").send().await?.status().as_u16())
}

/// Two attempts that hang fit in the deadline, with a tenth of the timeout left for the
/// second; three that fail at once.
#[resilient(timeout = "2s", deadline = "4s", max_attempts = 3)]
pub async fn read_twice(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://x/").send().await?.status().as_u16())
}

/// Around `read`, whose three attempts (and their backoffs) outlast this attempt's 3 s: this
/// attempt's end cuts `read` after it retried, which is `read`'s failure, not retried again
/// around it (`a_nested_call_that_retried_then_ran_out_of_the_outer_attempts_time_is_not_retried`).
#[resilient(timeout = "3s", deadline = "20s", method = GET)]
pub async fn page(c: &reqwest::Client) -> Result<u16, Error> {
    read(c).await
}

#[resilient(timeout = "500ms", max_attempts = 3)]
pub async fn leaf(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://x/").send().await?.status().as_u16())
}

/// One attempt of 2 s around `leaf`'s three.
#[resilient(timeout = "2s", method = GET, max_attempts = 1)]
pub async fn middle(c: &reqwest::Client) -> Result<u16, Error> {
    leaf(c).await
}

#[resilient(timeout = "10s", deadline = "30s", method = GET)]
pub async fn mid3(c: &reqwest::Client) -> Result<u16, Error> {
    leaf(c).await
}

#[resilient(timeout = "2s", deadline = "30s", method = GET)]
pub async fn top3(c: &reqwest::Client) -> Result<u16, Error> {
    mid3(c).await
}

/// Around `middle`, whose 2 s outlast this attempt's 1 s: each of its 3 attempts sends what
/// `leaf` sends in `middle`'s one attempt (cut to 1 s: two of `leaf`'s, counted as three).
#[resilient(timeout = "1s", deadline = "30s", method = GET)]
pub async fn top(c: &reqwest::Client) -> Result<u16, Error> {
    middle(c).await
}

#[resilient(timeout = "2s", max_attempts = 3, retry_on = [503])]
pub async fn lookup(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://x/").send().await?.status().as_u16())
}

/// One attempt, the callee's timeout.
#[resilient(timeout = "2s", method = GET, max_attempts = 1)]
pub async fn wrapper(c: &reqwest::Client) -> Result<u16, Error> {
    lookup(c).await
}

#[resilient(timeout = "1s", max_attempts = 3, budget = false, backoff(initial = "1s", jitter = none), hedge(delay = "300ms"))]
pub async fn slow_to_retry(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://x/").send().await?.status().as_u16())
}

#[resilient(timeout = "2s", deadline = "20s", max_attempts = 5, budget = false, method = GET)]
pub async fn patient(c: &reqwest::Client) -> Result<u16, Error> {
    slow_to_retry(c).await
}
"#,
        )],
    );
    let worst = worst_cases(&dir);
    assert_eq!(worst("hanging::charge"), 1);
    assert_eq!(worst("hanging::charge_keyed"), 3);
    assert_eq!(worst("hanging::read"), 3);
    assert_eq!(worst("hanging::read_within"), 3);
    assert_eq!(worst("hanging::read_twice"), 3);
    assert_eq!(worst("hanging::page"), 3);
    assert_eq!(worst("hanging::middle"), 3);
    // `middle` makes one attempt: cut by `top`'s 1 s before it could retry, retried by `top`,
    // each time with what of `leaf` fits (two of its attempts, counted as three).
    assert_eq!(worst("hanging::top"), 9);
    // All of `leaf`'s retries inside one of `mid3`'s attempts, cut by `top3`'s 2 s: `leaf`
    // retried, so `mid3` gives up on it, and `top3` on `mid3` (3 requests), listed as 9, an
    // upper bound (were `mid3` cut before `leaf` could retry, each of `top3`'s 3 attempts
    // would run it again).
    assert_eq!(worst("hanging::top3"), 9);
    // A wrapper with one attempt and the same timeout as its callee: against a fast 503 the
    // callee makes all 3 of its attempts inside the wrapper's one.
    assert_eq!(worst("hanging::wrapper"), 3);
    // A callee whose first backoff (1 s) does not fit the second left of the caller's 2 s
    // attempt gives up without retrying: each of the caller's 5 attempts runs it again, with
    // its hedge (10).
    assert!(worst("hanging::patient").as_u64().unwrap() >= 10);
    // A keyed call may add asks for a replay still in progress: one each 100 ms until its
    // deadline (30 s, the default), outside its attempts; an unkeyed one none.
    let out = run(&["list", dir.to_str().unwrap(), "--json"]);
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let asks = |f: &str| {
        all.as_array()
            .unwrap()
            .iter()
            .find(|x| x["function"] == f)
            .unwrap_or_else(|| panic!("{f} listed"))["asks_per_call_worst_case"]
            .clone()
    };
    assert_eq!(asks("hanging::charge_keyed"), 300);
    assert_eq!(asks("hanging::read"), serde_json::Value::Null);
}

/// Modules are found as the compiler finds them, from each crate root through its `mod`
/// declarations: a module `src/main.rs` declares belongs to the binary (the package's name),
/// not the library; a library at `[lib] path` is its crate's root; an example's and a test's
/// modules are theirs; a file no root declares is not compiled, and not listed.
#[test]
fn modules_are_found_through_the_mod_declarations_of_each_crate_root() {
    let f = annotated_get;
    let dir = crate_with(
        "my-pkg",
        &[
            ("src/core.rs", &format!("pub mod store;\n{}", f("root_fn"))),
            ("src/store.rs", &f("put")),
            ("src/main.rs", &format!("mod cli;\n{}", f("main_fn"))),
            ("src/cli.rs", &f("parse")),
            ("src/orphan.rs", &f("never_compiled")),
            (
                "examples/demo/main.rs",
                &format!("mod client;\n{}", f("demo_main")),
            ),
            ("examples/demo/client.rs", &f("call")),
            ("tests/it.rs", &format!("mod common;\n{}", f("it_fn"))),
            ("tests/common/mod.rs", &f("helper")),
            (
                "src/nested.rs",
                "// declared nowhere either\npub fn plain() {}\n",
            ),
        ],
    );
    let manifest = dir.join("Cargo.toml");
    let mut toml = std::fs::read_to_string(&manifest).unwrap();
    toml.push_str("\n[lib]\nname = \"mylib\"\npath = \"src/core.rs\"\n");
    std::fs::write(&manifest, toml).unwrap();
    let out = run(&["list", dir.to_str().unwrap(), "--tests", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut listed: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["function"].as_str())
        .collect();
    listed.sort_unstable();
    assert_eq!(
        listed,
        [
            "demo::client::call",
            "demo::demo_main",
            "it::common::helper",
            "it::it_fn",
            "my_pkg::cli::parse",
            "my_pkg::main_fn",
            "mylib::root_fn",
            "mylib::store::put",
        ]
    );
}

/// A workspace's `members` globs as Cargo reads them (`crates/*-svc`, a `*` inside a segment)
/// and its `exclude`: an excluded member's unsafe POST is not the workspace's.
#[test]
fn workspace_member_globs_and_exclude_are_read_as_cargo_reads_them() {
    let f = annotated_get;
    let manifest = |name: &str| {
        format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n")
    };
    let unsafe_post = "#[resilience_runtime::resilient(timeout = \"1s\")]\npub async fn charge(c: &reqwest::Client) -> Result<u16, resilience_runtime::Error> {\n    Ok(c.post(\"http://127.0.0.1:1/\").send().await?.status().as_u16())\n}\n";
    let (a, b, old, other) = (
        manifest("orders-svc"),
        manifest("users-svc"),
        manifest("old"),
        manifest("tooling"),
    );
    let (fa, fb, fo) = (f("orders"), f("users"), f("tool"));
    let dir = crate_with(
        "globs",
        &[
            ("crates/orders-svc/Cargo.toml", a.as_str()),
            ("crates/orders-svc/src/lib.rs", fa.as_str()),
            ("crates/users-svc/Cargo.toml", b.as_str()),
            ("crates/users-svc/src/lib.rs", fb.as_str()),
            ("crates/tooling/Cargo.toml", other.as_str()),
            ("crates/tooling/src/lib.rs", fo.as_str()),
            ("libs/old/Cargo.toml", old.as_str()),
            ("libs/old/src/lib.rs", unsafe_post),
        ],
    );
    std::fs::write(
        dir.join("Cargo.toml"),
        "[workspace]\nmembers = [\"crates/*-svc\", \"libs/*\"]\nexclude = [\"libs/old\"]\n",
    )
    .unwrap();
    let out = run(&["list", dir.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut listed: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["function"].as_str())
        .collect();
    listed.sort_unstable();
    assert_eq!(listed, ["orders_svc::orders", "users_svc::users"]);
    let check = run(&["check", dir.to_str().unwrap()]);
    assert!(check.status.success(), "{}", text(&check));
}

/// One shared state name with two settings (a breaker `pg` in `[breakers.pg]` for one function,
/// inline with other settings in another): the runtime keeps the first function's, so `check`
/// says so, naming both places; the same name with the same settings is one state, as meant.
#[test]
fn a_shared_state_defined_twice_differently_is_a_problem() {
    let dir = crate_with(
        "twice",
        &[
            (
                "resilience.toml",
                "[breakers.pg]\nfailure_rate = 0.5\nmin_calls = 10\nwindow = 20\n",
            ),
            (
                "src/lib.rs",
                r#"use resilience_runtime::{resilient, Error};

#[resilient(method = GET, timeout = "1s", breaker = "pg")]
pub async fn a(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://x/").send().await?.status().as_u16())
}

#[resilient(method = GET, timeout = "1s", breaker = "pg")]
pub async fn b(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://x/").send().await?.status().as_u16())
}

#[resilient(method = GET, timeout = "1s", breaker = { name = "pg", failure_rate = 0.9, min_calls = 2, window = 4 })]
pub async fn c(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://x/").send().await?.status().as_u16())
}
"#,
            ),
        ],
    );
    let out = run(&["check", dir.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    let printed = text(&out);
    assert_eq!(
        printed.matches("has other settings").count(),
        1,
        "{printed}"
    );
    assert!(
        printed.contains("twice::c") && printed.contains("twice::a"),
        "{printed}"
    );
}

/// What the compiler refuses, the check refuses too: `#[resilient]` on a trait method without
/// a body. And the command line takes one DIR, and each command only its own options.
#[test]
fn an_attribute_on_a_bodiless_trait_method_and_stray_arguments_are_refused() {
    let dir = crate_with(
        "bodiless",
        &[(
            "src/lib.rs",
            r#"use resilience_runtime::{resilient, Error};

#[allow(async_fn_in_trait)]
pub trait Api {
    #[resilient(method = GET, timeout = "1s")]
    async fn get(&self) -> Result<u16, Error>;
}
"#,
        )],
    );
    let out = run(&["check", dir.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    let printed = text(&out);
    assert!(
        printed.contains(
            "src/lib.rs:6:14: bodiless::Api::get: #[resilient] goes on a method with a body"
        ),
        "{printed}"
    );
    let d = dir.to_str().unwrap();
    for args in [
        vec!["list", d, d],
        vec!["check", d, "--json"],
        vec!["list", d, "--overrides", "x.toml"],
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
    }
}

/// A hedge whose delay reaches the attempt's timeout would never start (the attempt ends
/// first): refused, as the build refuses it; one that starts sooner counts in the requests per
/// call.
#[test]
fn a_hedge_that_cannot_start_before_the_timeout_is_refused() {
    let dir = crate_with(
        "late_hedge",
        &[(
            "src/lib.rs",
            r#"use resilience_runtime::{resilient, Error};

#[resilient(method = GET, timeout = "1s", deadline = "30s", max_attempts = 3, hedge(delay = "2s", max = 3))]
pub async fn late(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://x/").send().await?.status().as_u16())
}
"#,
        )],
    );
    let out = run(&["check", dir.to_str().unwrap()]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("hedge delay (2s) is not shorter than the attempt timeout (1s)"),
        "{t}"
    );
    let dir = crate_with(
        "early_hedge",
        &[(
            "src/lib.rs",
            r#"use resilience_runtime::{resilient, Error};

#[resilient(method = GET, timeout = "1s", deadline = "30s", max_attempts = 3, hedge(delay = "200ms", max = 3))]
pub async fn early(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://x/").send().await?.status().as_u16())
}
"#,
        )],
    );
    let worst = worst_cases(&dir);
    assert_eq!(worst("early_hedge::early"), 12);
}

/// A typo in `[package.metadata.resilience]` is told once, at the function that reads it, not
/// a second time for the crate with a doubled `Cargo.toml:`.
#[test]
fn a_metadata_typo_is_told_once() {
    let dir = crate_with("typo", &[("src/lib.rs", &annotated_get("get"))]);
    let manifest = dir.join("Cargo.toml");
    let mut toml = std::fs::read_to_string(&manifest).unwrap();
    toml.push_str("\n[package.metadata.resilience]\nconifg = \"x.toml\"\n");
    std::fs::write(&manifest, toml).unwrap();
    let out = run(&["check", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let printed = text(&out);
    assert_eq!(
        printed.matches("unknown key `conifg`").count(),
        1,
        "{printed}"
    );
    assert!(!printed.contains("Cargo.toml: Cargo.toml:"), "{printed}");
}

/// `list` shows a constant backoff as its one step, without the `max` and `multiplier` it
/// ignores.
#[test]
fn list_shows_a_constant_backoff_as_its_step() {
    let dir = crate_with(
        "constant_backoff",
        &[(
            "src/lib.rs",
            "use resilience_runtime::{resilient, Error};\n\n#[resilient(timeout = \"2s\", backoff(kind = constant, initial = \"30ms\"))]\npub async fn stock(c: &reqwest::Client) -> Result<u16, Error> {\n    Ok(c.get(\"http://inventory/stock\").send().await?.status().as_u16())\n}\n",
        )],
    );
    let out = run(&["list", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    let line = t
        .lines()
        .find(|l| l.starts_with("  constant_backoff::stock: backoff "))
        .unwrap_or_else(|| panic!("listed: {t}"));
    assert!(
        line.contains("backoff constant 30ms equal jitter;"),
        "{line}"
    );
    assert!(!line.contains('×'), "{line}");
}

/// `check` reads the integration tests' sources only with `--tests`: an unsafe POST written in
/// `tests/` passes without it, and fails with it.
#[test]
fn check_reads_the_tests_only_with_tests() {
    let post = "use resilience_runtime::{resilient, Error};\n\n#[resilient(timeout = \"2s\")]\npub async fn charge(c: &reqwest::Client) -> Result<(), Error> {\n    c.post(\"http://pg/charges\").send().await?;\n    Ok(())\n}\n";
    let dir = crate_with(
        "unsafe_in_tests",
        &[
            ("src/lib.rs", "pub fn nothing() {}\n"),
            ("tests/charge.rs", post),
        ],
    );
    let plain = run(&["check", dir.to_str().unwrap()]);
    assert!(plain.status.success(), "{}", text(&plain));
    let with_tests = run(&["check", dir.to_str().unwrap(), "--tests"]);
    assert_eq!(with_tests.status.code(), Some(1), "{}", text(&with_tests));
    let t = text(&with_tests);
    assert!(t.contains("tests/charge.rs:5:"), "{t}");
    assert!(t.contains("this POST could be retried"), "{t}");
}

/// What `check` does not read, as the README lists it: a file no root declares, a function a
/// `macro_rules!` makes, a `[[bench]]` target; and a `#[cfg]` is not weighed (a function the
/// compiler leaves out is checked all the same).
#[test]
fn what_check_does_not_read() {
    let unsafe_post = |name: &str| {
        format!(
            "#[resilience_runtime::resilient(timeout = \"2s\")]\npub async fn {name}(c: &reqwest::Client) -> Result<(), resilience_runtime::Error> {{\n    c.post(\"http://pg/charges\").send().await?;\n    Ok(())\n}}\n"
        )
    };
    let by_macro = format!(
        "macro_rules! make {{\n    () => {{\n{}    }};\n}}\nmake!();\n",
        unsafe_post("made")
    );
    let unread = crate_with(
        "unread",
        &[
            ("src/lib.rs", &format!("{}{by_macro}", annotated_get("get"))),
            ("src/orphan.rs", &unsafe_post("orphan")),
            ("benches/load.rs", &unsafe_post("bench")),
        ],
    );
    let out = run(&["check", unread.to_str().unwrap()]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("1 annotated function"), "{t}");

    let cfg = crate_with(
        "cfg_not_weighed",
        &[(
            "src/lib.rs",
            &format!("#[cfg(any())]\n{}", unsafe_post("never_built")),
        )],
    );
    let out = run(&["check", cfg.to_str().unwrap()]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("cfg_not_weighed::never_built"), "{t}");
}

/// What the build refuses, the check refuses too, in the shapes it once passed: a method under
/// `#[async_trait]` (the attribute sees a plain fn), an unsafe POST in `mod r#gen;` (its file
/// is `gen.rs`, not `r#gen.rs`, and went unread), an attribute a `#[cfg_attr]` applies (unseen),
/// a module whose `#[path]` a `#[cfg_attr]` gives (unread), and a fallback of a function
/// returning `impl Trait` (refused only as the code was generated).
#[test]
fn check_refuses_what_the_build_refuses_in_the_shapes_it_once_passed() {
    let post = |name: &str| {
        format!(
            "#[resilient(timeout = \"2s\")]\npub async fn {name}(c: &reqwest::Client) -> Result<(), Error> {{\n    c.post(\"http://pg/charges\").send().await?;\n    Ok(())\n}}\n"
        )
    };
    let lib = "use resilience_runtime::{resilient, Error};\n\
         pub mod r#gen;\n\
         #[cfg_attr(unix, path = \"sys_unix.rs\")]\n\
         pub mod sys;\n\
         pub struct Svc;\n\
         #[async_trait::async_trait]\n\
         pub trait Api { async fn get(&self, c: &reqwest::Client) -> Result<u16, Error>; }\n\
         #[async_trait::async_trait]\n\
         impl Api for Svc {\n\
         #[resilient(timeout = \"1s\")]\n\
         async fn get(&self, c: &reqwest::Client) -> Result<u16, Error> { Ok(c.get(\"http://a/\").send().await?.status().as_u16()) }\n\
         }\n\
         #[cfg_attr(feature = \"resilience\", resilient(timeout = \"2s\"))]\n\
         pub async fn gated(c: &reqwest::Client) -> Result<(), Error> {\n    c.post(\"http://pg/charges\").send().await?;\n    Ok(())\n}\n\
         #[resilient(method = GET, fallback = cached)]\n\
         pub async fn fresh(c: &reqwest::Client) -> Result<impl Iterator<Item = u8>, Error> { Ok(c.get(\"http://a/\").send().await?.bytes().await?.to_vec().into_iter()) }\n";
    let generated = format!(
        "use resilience_runtime::{{resilient, Error}};\n{}",
        post("charge")
    );
    let sys = format!(
        "use resilience_runtime::{{resilient, Error}};\n{}",
        post("refund")
    );
    let dir = crate_with(
        "shapes",
        &[
            ("src/lib.rs", lib),
            ("src/gen.rs", &generated),
            ("src/sys_unix.rs", &sys),
        ],
    );
    let out = run(&["check", dir.to_str().unwrap()]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    for want in [
        "shapes::<Svc as Api>::get: #[resilient] sees this method after #[async_trait]",
        "src/gen.rs:4:7: shapes::gen::charge: this POST could be retried",
        "src/sys_unix.rs:4:7: shapes::sys::refund: this POST could be retried",
        "shapes::gated: this POST could be retried",
        "`fallback` needs a return type the fallback can return too",
    ] {
        assert!(t.contains(want), "{want}:\n{t}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Functions declared in `async` methods' bodies are listed under the method's own path, as
/// the runtime names them (`paths::Ledger::get::call`): two types' `get` methods in one module
/// each with a `call` are two functions, not one; in `async` functions nested in others, under
/// the whole chain; in a sync function's body, under its name alone, as before.
#[test]
fn functions_declared_in_async_bodies_are_listed_under_their_owners_paths() {
    let call = "#[resilient(method = GET, timeout = \"1s\")] async fn call(c: &reqwest::Client) -> Result<u16, Error> { Ok(c.get(\"http://a/\").send().await?.status().as_u16()) }";
    let lib = format!(
        "use resilience_runtime::{{resilient, Error}};\n\
         pub struct Ledger;\npub struct Catalog;\n\
         impl Ledger {{ pub async fn get(&self) {{ {call} }} }}\n\
         impl Catalog {{ pub async fn get(&self) {{ {call} }} }}\n\
         pub async fn outer() {{ async fn middle() {{ {call} }} }}\n\
         pub fn sync_outer() {{ fn middle() {{ {call} }} }}\n"
    );
    let dir = crate_with("paths", &[("src/lib.rs", &lib)]);
    let out = run(&["list", dir.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut listed: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["function"].as_str().unwrap())
        .collect();
    listed.sort_unstable();
    assert_eq!(
        listed,
        [
            "paths::Catalog::get::call",
            "paths::Ledger::get::call",
            "paths::middle::call",
            "paths::outer::middle::call",
        ],
        "{}",
        text(&out)
    );
    std::fs::remove_dir_all(&dir).ok();
}
