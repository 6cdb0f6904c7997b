//! Per-call overhead of a resilience policy around a body that does nothing, with criterion.
//!
//! `taskset -c 1 cargo bench --bench overhead` measures, on current-thread tokio runtimes with
//! no tracing subscriber:
//! - `no_fault`: every contender of `common/micro.rs` around a body that succeeds;
//! - `fail_once`: the retrying contenders around a body whose first attempt fails; the retry
//!   comes after a zero delay, slept on a paused clock (see [`paused_runtime`]);
//! - `clock`: one clock read, std's and tokio's;
//! - `loopback_get`: one GET on a loopback hyper server, the yardstick for "share of a round
//!   trip".
//!
//! Everything is measured in `OVERHEAD_ROUNDS` rounds (default 3; criterion ids `<group>_r<n>`),
//! the order rotated every round, so that the machine's noise falls on every contender alike.
//! At the end it prints markdown tables: per contender, the median over the rounds of
//! criterion's median, the range over the rounds, and the median over the rounds of its ratio
//! to the baseline of the same round.
//!
//! By default tokio comes without `test-util` (see `benches/Cargo.toml`): clock reads cost what
//! they cost in production, and `fail_once`, which needs the paused clock, is left out; with
//! `--features paused-clock` it is measured too.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::http::{Clients, Contender};
use common::median;
#[cfg(feature = "paused-clock")]
use common::micro::flaky;
use common::micro::{self, ok};
use common::server::Server;
use criterion::{Bencher, Criterion};
use tokio::runtime::Runtime;

type Case<'a> = (&'static str, Box<dyn FnMut(&mut Bencher<'_>) + 'a>);

/// A group of cases measured together, and the case its ratios are taken against.
struct Group<'a> {
    name: &'static str,
    baseline: &'static str,
    cases: Vec<Case<'a>>,
}

/// The loopback GET contenders.
const LOOPBACK: [(&str, Contender); 5] = [
    ("bare_reqwest", Contender::Bare),
    ("timeout_bare_reqwest", Contender::TimeoutBare),
    ("resilient", Contender::Resilient),
    ("resilient_unstamped", Contender::ResilientUnstamped),
    ("resilient_full", Contender::ResilientFull),
];

/// Where criterion writes its estimates: `$CRITERION_HOME`, else `<target>/criterion`.
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    let exe = std::env::current_exe().expect("the bench's own path");
    // <target>/<profile>/deps/<bench>-<hash>
    exe.ancestors()
        .nth(3)
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
        .join("criterion")
}

/// A current-thread runtime whose clock is paused: a zero-delay `tokio::time::sleep`, which on
/// a real clock waits for the timer's next 1 ms tick, ends as soon as nothing else can run.
#[cfg(feature = "paused-clock")]
fn paused_runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("tokio runtime")
}

/// Runs every contender a few times and checks it does what the table says it does.
fn check(rt: &Runtime) {
    rt.block_on(async {
        macro_rules! check {
            ($name:literal, $f:ident, $cases:ident) => {
                for _ in 0..3 {
                    assert!(ok::$f().await.is_ok(), "{}: no-fault call failed", $name);
                }
                #[cfg(feature = "paused-clock")]
                check!(@flaky $name, $f, $cases);
            };
            (@flaky $name:literal, $f:ident, both) => {
                for _ in 0..30 {
                    let before = micro::flaky_runs();
                    let r = flaky::$f().await;
                    assert!(r.is_ok(), "{}: fail-once call failed: {r:?}", $name);
                    assert_eq!(micro::flaky_runs() - before, 2, "{}: not exactly 2 attempts", $name);
                }
            };
            (@flaky $name:literal, $f:ident, no_fault_only) => {};
        }
        for_each_contender!(check);
    });
}

fn no_fault(rt: &Runtime) -> Group<'_> {
    let mut cases: Vec<Case<'_>> = Vec::new();
    macro_rules! case {
        ($name:literal, $f:ident, $cases:ident) => {
            cases.push(($name, Box::new(move |b| b.to_async(rt).iter(ok::$f))));
        };
    }
    for_each_contender!(case);
    Group {
        name: "no_fault",
        baseline: "timeout_bare",
        cases,
    }
}

#[cfg(feature = "paused-clock")]
fn fail_once(paused: &Runtime) -> Group<'_> {
    let mut cases: Vec<Case<'_>> = Vec::new();
    macro_rules! case {
        ($name:literal, $f:ident, both) => {
            cases.push(($name, Box::new(move |b| b.to_async(paused).iter(flaky::$f))));
        };
        ($name:literal, $f:ident, no_fault_only) => {};
    }
    for_each_contender!(case);
    Group {
        name: "fail_once",
        baseline: "hand_loop_timeout",
        cases,
    }
}

/// What one clock read costs: with tokio's `test-util` (enabled by the dev-dependencies for
/// the tests), tokio's `Instant::now()` goes through the runtime's mockable clock.
fn clock<'a>(rt: &'a Runtime, _paused: Option<&'a Runtime>) -> Group<'a> {
    let mut cases: Vec<Case<'a>> = vec![
        (
            "std_now",
            Box::new(move |b| b.to_async(rt).iter(|| async { std::time::Instant::now() })),
        ),
        (
            "tokio_now",
            Box::new(move |b| {
                b.to_async(rt)
                    .iter(|| async { tokio::time::Instant::now() })
            }),
        ),
    ];
    if let Some(p) = _paused {
        cases.push((
            "tokio_now_paused",
            Box::new(move |b| b.to_async(p).iter(|| async { tokio::time::Instant::now() })),
        ));
    }
    Group {
        name: "clock",
        baseline: "std_now",
        cases,
    }
}

fn loopback<'a>(rt: &'a Runtime, clients: &'a Clients) -> Group<'a> {
    let cases = LOOPBACK
        .iter()
        .map(|&(name, which)| -> Case<'a> {
            (
                name,
                Box::new(move |b| b.to_async(rt).iter(|| clients.call(which))),
            )
        })
        .collect();
    Group {
        name: "loopback_get",
        baseline: "bare_reqwest",
        cases,
    }
}

fn main() {
    let rounds = common::env_usize("OVERHEAD_ROUNDS", 3);
    let out = criterion_dir();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1))
        .sample_size(40)
        .output_directory(&out)
        .configure_from_args();
    let rt = common::runtime();
    check(&rt);
    #[cfg(feature = "paused-clock")]
    let paused_rt = paused_runtime();
    #[cfg(feature = "paused-clock")]
    check(&paused_rt);
    #[cfg(feature = "paused-clock")]
    let paused = Some(&paused_rt);
    #[cfg(not(feature = "paused-clock"))]
    let paused = None;
    let server = Server::start();
    let clients = Clients::new(server.url("/"));
    let started = SystemTime::now();

    let mut groups = vec![no_fault(&rt)];
    #[cfg(feature = "paused-clock")]
    groups.push(fail_once(&paused_rt));
    groups.push(clock(&rt, paused));
    groups.push(loopback(&rt, &clients));

    for round in 0..rounds {
        for group in &mut groups {
            let mut g = c.benchmark_group(format!("{}_r{round}", group.name));
            let n = group.cases.len();
            for k in 0..n {
                let (name, case) = &mut group.cases[(k + round * n / rounds.max(1)) % n];
                g.bench_function(*name, |b| case(b));
            }
            g.finish();
        }
    }
    c.final_summary();

    println!(
        "\n{rounds} rounds; per contender: the median over the rounds of criterion's median ns/call, [the range over the rounds], and the median over the rounds of its ratio to the same round's baseline.\n"
    );
    for group in &groups {
        table(&out, group, rounds, started);
    }
}

/// criterion's median in ns, when it measured `group/name` in this run.
fn estimate(out: &Path, group: &str, name: &str, since: SystemTime) -> Option<f64> {
    let path = out.join(group).join(name).join("new/estimates.json");
    let fresh = std::fs::metadata(&path).ok()?.modified().ok()? >= since;
    if !fresh {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn label(group: &str, name: &str) -> String {
    match group {
        "clock" => match name {
            "std_now" => "`std::time::Instant::now()`".to_owned(),
            "tokio_now" if cfg!(not(feature = "paused-clock")) => {
                "`tokio::time::Instant::now()` (tokio without `test-util`)".to_owned()
            }
            "tokio_now" => "`tokio::time::Instant::now()` (tokio with `test-util`)".to_owned(),
            _ => "the same, clock paused".to_owned(),
        },
        "loopback_get" => LOOPBACK
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("?", |(_, c)| c.label())
            .to_owned(),
        _ => micro::label(name).to_owned(),
    }
}

fn table(out: &Path, group: &Group<'_>, rounds: usize, since: SystemTime) {
    let names: Vec<&str> = group.cases.iter().map(|(n, _)| *n).collect();
    let per_round = |name: &str| -> Vec<Option<f64>> {
        (0..rounds)
            .map(|r| estimate(out, &format!("{}_r{r}", group.name), name, since))
            .collect()
    };
    if names
        .iter()
        .all(|n| per_round(n).iter().all(Option::is_none))
    {
        return; // not measured in this run (a filter)
    }
    println!("#### {}\n", group.name);
    println!(
        "| contender | median ns/call [range] | × {} |",
        label(group.name, group.baseline)
    );
    println!("|---|---|---|");
    let base = per_round(group.baseline);
    for name in names {
        let ns = per_round(name);
        let mut got: Vec<f64> = ns.iter().flatten().copied().collect();
        if got.is_empty() {
            continue;
        }
        let mut ratios: Vec<f64> = ns
            .iter()
            .zip(&base)
            .filter_map(|(x, b)| Some(x.as_ref()? / b.as_ref()?))
            .collect();
        let (lo, hi) = (
            got.iter().copied().fold(f64::INFINITY, f64::min),
            got.iter().copied().fold(0.0, f64::max),
        );
        let m = median(&mut got);
        let ratio = if ratios.is_empty() {
            "—".to_owned()
        } else {
            format!("{:.2}×", median(&mut ratios))
        };
        println!(
            "| {} | {m:.1} [{lo:.1}, {hi:.1}] | {ratio} |",
            label(group.name, name)
        );
    }
    println!();
}
