//! `resilience`: the policies of a crate, for CI and for people.
//!
//! ```text
//! resilience check [DIR] [--overrides FILE]   check every #[resilient] function and the policy
//!                                             file (and an override file) with the compiler's
//!                                             rules and messages; exit 1 on any problem
//! resilience list [DIR] [--json]              every #[resilient] function with its effective
//!                                             policy, where each setting came from, its
//!                                             worst-case time and request amplification
//! ```
//!
//! `DIR` is the crate's directory (its `Cargo.toml`), `.` by default. Sources are read from
//! `src/` and `examples/`; `--tests` adds `tests/`.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use quote::ToTokens as _;
use resilience_policy::analysis::{Analysis, analyze, check_file};
use resilience_policy::model::{BackoffKind, KeyModel, StateRef};
use resilience_policy::value::Origin;
use resilience_runtime::Policy;
use resilience_spec::fmt_duration;
use syn::visit::Visit;

const USAGE: &str = "usage: resilience check [DIR] [--tests] [--overrides FILE]\n       resilience list [DIR] [--tests] [--json]";

/// `println!` that ends the process quietly when its reader has gone (`resilience list | head`),
/// as a command killed by SIGPIPE would (exit 141), instead of panicking on the broken pipe.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout().lock(), $($t)*).is_err() {
            std::process::exit(141);
        }
    }};
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first().cloned() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    // The command first: asking for help, or a typo, needs no crate read.
    match cmd.as_str() {
        "check" | "list" => {}
        "-h" | "--help" | "help" => {
            outln!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("unknown command {cmd}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    let mut dir = None;
    let (mut json, mut tests, mut overrides) = (false, false, None);
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => json = true,
            "--tests" => tests = true,
            "--overrides" => match it.next() {
                Some(f) => overrides = Some(PathBuf::from(f)),
                None => {
                    eprintln!("--overrides takes a file\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                outln!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other if other.starts_with('-') => {
                eprintln!("unknown option {other}\n{USAGE}");
                return ExitCode::from(2);
            }
            other if dir.is_none() => dir = Some(PathBuf::from(other)),
            other => {
                eprintln!("one DIR only: {other} follows another\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    // What one command takes, not the other.
    if (cmd == "check" && json) || (cmd == "list" && overrides.is_some()) {
        eprintln!(
            "{} takes no {}\n{USAGE}",
            cmd,
            if json { "--json" } else { "--overrides" }
        );
        return ExitCode::from(2);
    }
    // An override file it cannot read (missing, not allowed, not UTF-8) is a command line it
    // cannot take, as a crate it cannot read is: exit 2, not a problem of the policies (1).
    // Read here once (a pipe, `<(…)`, too).
    let overrides = match &overrides {
        None => None,
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some((path.clone(), text)),
            Err(e) => {
                eprintln!("resilience: --overrides {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
    };
    let dir = dir.unwrap_or_else(|| PathBuf::from("."));
    let krate = match Crate::read(&dir, tests) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("resilience: {e}");
            return ExitCode::from(2);
        }
    };
    let code = match cmd.as_str() {
        "check" => check(
            &krate,
            overrides.as_ref().map(|(p, t)| (p.as_path(), t.as_str())),
        ),
        "list" => {
            list(&krate, json);
            if krate.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                for p in &krate.problems {
                    eprintln!("{p}");
                }
                ExitCode::FAILURE
            }
        }
        _ => unreachable!("the command was checked above"),
    };
    if krate.unreadable {
        ExitCode::from(2)
    } else {
        code
    }
}

/// One annotated function, analysed as the macro analyses it.
struct Function {
    /// Full path, as the runtime names it: `crate::module::Type::name`.
    path: String,
    name: String,
    file: String,
    line: usize,
    analysis: Analysis,
    /// Names of functions its body calls (`name(` or `.name(`).
    calls: Vec<String>,
    /// Of those, the ones called somewhere other than as `name(…).await?` (or as the body's
    /// last expression): their failure may be handled and the body go on.
    handled: Vec<String>,
}

#[derive(Default)]
struct Crate {
    functions: Vec<Function>,
    /// The file of every annotated function found, analysed or refused.
    found_in: Vec<String>,
    /// Every problem, as `file:line:col: message`.
    problems: Vec<String>,
    /// The policy files its packages read (each package's, and any a function names with
    /// `config = "…"`), by canonical path, with the name they are shown by: checked once, in
    /// the end, against the policies every package uses (a workspace's members share files).
    files: Vec<(PathBuf, String)>,
    /// A workspace member whose manifest could not be read: the others are still checked,
    /// and the command exits 2, as for a crate it cannot read.
    unreadable: bool,
}

impl Crate {
    /// The crate (or workspace) at `dir`, its policy files checked against every function.
    fn read(dir: &Path, tests: bool) -> Result<Crate, String> {
        let mut krate = Crate::gather(dir, tests)?;
        krate.check_files();
        krate.check_shared();
        Ok(krate)
    }

    /// Shared state defined twice with different settings (a breaker `pg` inline in one
    /// function and in `[breakers.pg]` for another): at run time the first function called
    /// makes it, with its settings, and the other's are ignored (with a warning). A problem:
    /// define it once, in `resilience.toml`.
    fn check_shared(&mut self) {
        let mut seen: BTreeMap<(&str, &'static str, String), (String, &Function)> = BTreeMap::new();
        let mut problems = Vec::new();
        for f in &self.functions {
            // An integration test or an example is a program of its own: its state is never
            // another's. Libraries and binaries may be linked into one.
            let own_program = Path::new(&f.file)
                .components()
                .any(|c| matches!(c.as_os_str().to_str(), Some("tests" | "examples")));
            let program = if own_program {
                f.path.split("::").next().unwrap_or_default()
            } else {
                ""
            };
            let s = &f.analysis.shared;
            let states: [(&'static str, Option<(&String, String)>); 5] = [
                (
                    "budget",
                    s.budget.as_ref().map(|(n, m)| (n, format!("{m:?}"))),
                ),
                (
                    "breaker",
                    s.breaker
                        .as_ref()
                        .map(|(n, m)| (n, format!("{:?}", m.spec))),
                ),
                (
                    "bulkhead",
                    s.bulkhead.as_ref().map(|(n, m)| (n, format!("{m:?}"))),
                ),
                (
                    "rate limit",
                    s.rate_limit.as_ref().map(|(n, m)| (n, format!("{m:?}"))),
                ),
                (
                    "concurrency limit",
                    s.concurrency.as_ref().map(|(n, m)| (n, format!("{m:?}"))),
                ),
            ];
            for (kind, state) in states {
                // An unnamed state is the function's own.
                let Some((name, settings)) = state.filter(|(n, _)| !n.is_empty()) else {
                    continue;
                };
                match seen.get(&(program, kind, name.clone())) {
                    Some((first, g)) if *first != settings => problems.push(format!(
                        "{}:{}: {}: the {kind} `{name}` has other settings here than in {} ({}:{}): at run time the first function called makes it and the other's settings are ignored; define it once, in resilience.toml ([{}.{name}]), and name it from both",
                        f.file,
                        f.line,
                        f.path,
                        g.path,
                        g.file,
                        g.line,
                        match kind {
                            "budget" => "budgets",
                            "breaker" => "breakers",
                            "bulkhead" => "bulkheads",
                            "rate limit" => "rate_limits",
                            _ => "concurrency_limits",
                        }
                    )),
                    Some(_) => {}
                    None => {
                        seen.insert((program, kind, name.clone()), (settings, f));
                    }
                }
            }
        }
        self.problems.extend(problems);
    }

    fn gather(dir: &Path, tests: bool) -> Result<Crate, String> {
        let manifest = dir.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest)
            .map_err(|e| format!("{}: {e}", manifest.display()))?;
        let table = toml::from_str::<toml::Table>(&text)
            .map_err(|e| format!("{}: {e}", manifest.display()))?;
        let members = table
            .get("workspace")
            .and_then(|w| w.get("members"))
            .is_some();
        match table.get("package") {
            None => Crate::read_workspace(dir, &table, tests),
            Some(package) if !members => Crate::read_package(dir, &table, package, tests),
            // A package that is also a workspace's root: its own functions, then its members'.
            Some(package) => {
                let mut all = Crate::read_package(dir, &table, package, tests)?;
                let members = Crate::read_workspace(dir, &table, tests)?;
                all.functions.extend(members.functions);
                all.found_in.extend(members.found_in);
                all.problems.extend(members.problems);
                all.unreadable |= members.unreadable;
                all.add_files(members.files);
                Ok(all)
            }
        }
    }

    fn read_package(
        dir: &Path,
        table: &toml::Table,
        package: &toml::Value,
        tests: bool,
    ) -> Result<Crate, String> {
        let krate_name = |n: &str| n.replace('-', "_");
        let package_name = package
            .get("name")
            .and_then(|n| n.as_str())
            .map_or_else(|| "crate".to_owned(), krate_name);
        // The library's crate name (`[lib] name`), and each binary's by its file
        // (`[[bin]] name` and `path`; `src/main.rs` is the package's, `src/bin/x.rs` and
        // `src/bin/x/main.rs` are `x`): what `module_path!()` starts with there.
        let name = table
            .get("lib")
            .and_then(|l| l.get("name")?.as_str())
            .map_or_else(|| package_name.clone(), krate_name);
        // Declared binaries first (one may be `src/main.rs` under another name), then the
        // package's own `src/main.rs`.
        let mut bins = declared_targets(table, "bin");
        bins.push((PathBuf::from("src/main.rs"), package_name));
        // The crate roots, each with its crate name: the library (`[lib] path`, else
        // `src/lib.rs`), the binaries, examples and (`--tests`) integration tests; the files
        // each reaches through its `mod` declarations are its modules, as the compiler reads
        // them (a file no root declares is not compiled, and not listed).
        let mut roots: Vec<(PathBuf, String)> = Vec::new();
        let lib_path = table
            .get("lib")
            .and_then(|l| l.get("path")?.as_str())
            .map_or_else(|| PathBuf::from("src/lib.rs"), PathBuf::from);
        roots.push((lib_path, name.clone()));
        // A declared binary at `src/main.rs` is that file's one crate (the package's own
        // binary is not added beside it).
        for (path, bin) in &bins {
            if !roots.iter().any(|(r, _)| r == path) {
                roots.push((path.clone(), bin.clone()));
            }
        }
        // Examples and tests declared with a path of their own (`[[test]] name = "it"`,
        // `path = "tests/x.rs"`): the crate is named after `name`, not the file.
        let mut kinds = vec!["example"];
        if tests {
            kinds.push("test");
        }
        for kind in kinds {
            for (p, n) in declared_targets(table, kind) {
                if !roots.iter().any(|(r, _)| *r == p) {
                    roots.push((p, n));
                }
            }
        }
        let mut dirs = vec!["src/bin", "examples"];
        if tests {
            dirs.push("tests");
        }
        for sub in dirs {
            let mut found: Vec<PathBuf> = std::fs::read_dir(dir.join(sub))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect();
            found.sort();
            for p in found {
                let (file, stem) = if p.is_dir() {
                    (p.join("main.rs"), p.file_name())
                } else if p.extension().is_some_and(|x| x == "rs") {
                    (p.clone(), p.file_stem())
                } else {
                    continue;
                };
                if let Some(stem) = stem.map(|s| krate_name(&s.to_string_lossy())) {
                    let rel = file.strip_prefix(dir).unwrap_or(&file).to_path_buf();
                    if !roots.iter().any(|(r, _)| *r == rel) {
                        roots.push((rel, stem));
                    }
                }
            }
        }
        let mut files: Vec<(PathBuf, String)> = Vec::new();
        for (rel, krate) in &roots {
            let root = dir.join(rel);
            if root.is_file() {
                let mod_dir = root.parent().map(Path::to_path_buf).unwrap_or_default();
                modules_of(&root, &mod_dir, krate, &mut files, 0);
            }
        }
        let mut krate = Crate::default();
        let mut parsed = Vec::new();
        for (file, module) in files {
            let rel = file.strip_prefix(dir).unwrap_or(&file).to_path_buf();
            let display = rel.display().to_string();
            let src = match std::fs::read_to_string(&file) {
                Ok(s) => s,
                Err(e) => {
                    krate.problems.push(format!("{display}: {e}"));
                    continue;
                }
            };
            let ast = match syn::parse_file(&src) {
                Ok(a) => a,
                Err(e) => {
                    let at = e.span().start();
                    krate.problems.push(format!(
                        "{display}:{}:{}: not Rust the command can read: {e}",
                        at.line,
                        at.column + 1
                    ));
                    continue;
                }
            };
            parsed.push((file, module, display, ast));
        }
        // The names each module gives types and traits (aliases, renaming imports), from every
        // file first: an impl of an alias is named after the type it stands for.
        let mut names = Names::default();
        for (_, module, _, ast) in &parsed {
            let mut c = NameCollector {
                module: segments(module),
                names: &mut names,
            };
            c.visit_file(ast);
        }
        for (file, module, display, ast) in parsed {
            let mut v = Finder {
                module: segments(&module),
                self_ty: None,
                owner: None,
                enclosing: None,
                shown_module: None,
                found: Vec::new(),
                names: &names,
                refused: Vec::new(),
            };
            v.visit_file(&ast);
            for (line, col, msg) in v.refused {
                krate.found_in.push(display.clone());
                krate
                    .problems
                    .push(format!("{display}:{line}:{col}: {msg}"));
            }
            for (path, func, args) in v.found {
                krate.found_in.push(display.clone());
                let at = func.sig.ident.span().start();
                match analyze(args, &func, Some(dir), file.parent()) {
                    Ok(analysis) => krate.functions.push(Function {
                        path,
                        name: func.sig.ident.to_string(),
                        file: display.clone(),
                        line: at.line,
                        analysis,
                        calls: calls_in(func.block.to_token_stream()),
                        handled: handled_in(func.block.to_token_stream()),
                    }),
                    Err(e) => {
                        for e in e {
                            let s = e.span().start();
                            let msg = e.to_string().replace('\n', "\n    ");
                            krate.problems.push(format!(
                                "{display}:{}:{}: {path}: {msg}",
                                s.line,
                                s.column + 1
                            ));
                        }
                    }
                }
            }
        }
        krate.collect_files(dir);
        Ok(krate)
    }

    /// The package's policy file and any other its functions name with `config = "…"`, to be
    /// checked in the end ([`check_files`](Self::check_files)).
    fn collect_files(&mut self, dir: &Path) {
        let mut files: Vec<(PathBuf, String)> = Vec::new();
        match resilience_policy::config::locate(None, Some(dir), None) {
            Ok(Some(found)) => files.push(found),
            Ok(None) => {}
            // Once: a function reading the same manifest told it already.
            Err(e) => {
                if !self.problems.iter().any(|p| p.contains(&e)) {
                    self.problems.push(e);
                }
            }
        }
        for f in &self.functions {
            if let Some(p) = &f.analysis.config_path {
                let p = PathBuf::from(p);
                if !files.iter().any(|(q, _)| *q == p) {
                    let shown = p.strip_prefix(dir).unwrap_or(&p).display().to_string();
                    files.push((p, shown));
                }
            }
        }
        self.add_files(files);
    }

    /// Adds policy files, each once (by canonical path: members of a workspace may name the
    /// same file, each by a path of its own).
    fn add_files(&mut self, files: Vec<(PathBuf, String)>) {
        for (path, shown) in files {
            let canonical = path.canonicalize().unwrap_or(path);
            if !self.files.iter().any(|(q, _)| *q == canonical) {
                self.files.push((canonical, shown));
            }
        }
    }

    /// Every policy file read, every section of it, used or not ([`check_file`]), against the
    /// policies every function of the crate (or workspace) uses: what is wrong there and was
    /// not already reported for a function using it.
    fn check_files(&mut self) {
        let files = std::mem::take(&mut self.files);
        for (path, shown) in files {
            // The policies its own functions use: a `[policies.payments]` of this file is
            // not checked through a function reading `payments` from another file.
            let used: Vec<&str> = self
                .functions
                .iter()
                .filter(|f| {
                    f.analysis.config_path.as_deref().is_some_and(|c| {
                        let c = PathBuf::from(c);
                        c.canonicalize().unwrap_or(c) == path
                    })
                })
                .filter_map(|f| f.analysis.policy_name.as_deref())
                .collect();
            match resilience_policy::config::load(&path, &shown) {
                Ok(config) => {
                    for m in check_file(&config, &used) {
                        // A function's problems have their later lines indented: its first
                        // line (with the file position) tells the same problem.
                        let first = m.lines().next().unwrap_or_default();
                        if !self.problems.iter().any(|p| p.contains(first)) {
                            self.problems.push(m);
                        }
                    }
                }
                Err(e) => {
                    if !self.problems.iter().any(|p| p.contains(&e)) {
                        self.problems.push(e);
                    }
                }
            }
        }
    }

    /// A virtual workspace's root: each member crate (`members`, a trailing `/*` read as every
    /// directory there with a `Cargo.toml`), its files named from the root.
    fn read_workspace(dir: &Path, table: &toml::Table, tests: bool) -> Result<Crate, String> {
        let members: Vec<&str> = table
            .get("workspace")
            .and_then(|w| w.get("members")?.as_array())
            .map(|m| m.iter().filter_map(|v| v.as_str()).collect())
            .ok_or_else(|| {
                format!(
                    "{}: neither a package nor a workspace with members",
                    dir.join("Cargo.toml").display()
                )
            })?;
        let exclude: Vec<PathBuf> = table
            .get("workspace")
            .and_then(|w| w.get("exclude")?.as_array())
            .map(|e| {
                e.iter()
                    .filter_map(|v| v.as_str())
                    .map(|p| dir.join(p.trim_start_matches("./")))
                    .collect()
            })
            .unwrap_or_default();
        let mut dirs = Vec::new();
        for m in members {
            let m = m.trim_start_matches("./");
            if m.contains(['*', '?']) {
                // A glob, as Cargo reads one: each segment matched against the directories
                // there, a member being one with a `Cargo.toml`.
                let mut found = vec![dir.to_path_buf()];
                for segment in m.split('/').filter(|s| !s.is_empty()) {
                    let mut next = Vec::new();
                    for base in &found {
                        if !segment.contains(['*', '?']) {
                            next.push(base.join(segment));
                            continue;
                        }
                        let mut entries: Vec<PathBuf> = std::fs::read_dir(base)
                            .into_iter()
                            .flatten()
                            .flatten()
                            .map(|e| e.path())
                            .filter(|p| p.is_dir())
                            .filter(|p| {
                                p.file_name()
                                    .is_some_and(|n| glob_matches(segment, &n.to_string_lossy()))
                            })
                            .collect();
                        entries.sort();
                        next.extend(entries);
                    }
                    found = next;
                }
                dirs.extend(found.into_iter().filter(|p| p.join("Cargo.toml").is_file()));
            } else {
                dirs.push(dir.join(m));
            }
        }
        dirs.retain(|d| !exclude.iter().any(|e| e == d));
        let mut all = Crate::default();
        // The root itself, listed as a member (`"."`), is read as the package it is.
        let root = dir.canonicalize().ok();
        for member in dirs {
            if root.is_some() && member.canonicalize().ok() == root {
                continue;
            }
            let prefix = member.strip_prefix(dir).unwrap_or(&member).to_path_buf();
            let named = |f: &str| prefix.join(f).display().to_string();
            match Crate::gather(&member, tests) {
                Ok(c) => {
                    all.functions.extend(c.functions.into_iter().map(|mut f| {
                        f.file = named(&f.file);
                        f
                    }));
                    all.found_in.extend(c.found_in.iter().map(|f| named(f)));
                    all.problems.extend(c.problems.iter().map(|p| named(p)));
                    // A file shown from the root: its canonical path below the root's, else
                    // as the member named it.
                    let root = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
                    all.add_files(
                        c.files
                            .into_iter()
                            .map(|(path, shown)| {
                                let shown = match path.strip_prefix(&root) {
                                    Ok(rel) => rel.display().to_string(),
                                    Err(_) => named(&shown),
                                };
                                (path, shown)
                            })
                            .collect(),
                    );
                }
                Err(e) => {
                    all.problems.push(e);
                    all.unreadable = true;
                }
            }
        }
        Ok(all)
    }
}

/// The targets of a kind (`bin`, `example`, `test`) the manifest declares with a name and a
/// path: each path (without a leading `./`) with its crate name.
fn declared_targets(table: &toml::Table, kind: &str) -> Vec<(PathBuf, String)> {
    table
        .get(kind)
        .and_then(|t| t.as_array())
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let n = t.get("name")?.as_str()?;
            let p = Path::new(t.get("path")?.as_str()?);
            Some((
                p.strip_prefix("./").unwrap_or(p).to_path_buf(),
                n.replace('-', "_"),
            ))
        })
        .collect()
}

/// `file` as the module `module`, and every file its `mod name;` declarations reach (in it or
/// in its inline modules), as the compiler finds them: `name.rs` or `name/mod.rs` in
/// `mod_dir` (the directory of a crate root or a `mod.rs`, else the directory named after
/// the file), or a `#[path]` beside the file. Each (file, module) once; at most 32 deep.
/// Whether `name` matches the glob `pattern` (`*` any run of characters, `?` one).
fn glob_matches(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('*', rest)) => (0..=n.len()).any(|i| go(rest, &n[i..])),
            Some(('?', rest)) => !n.is_empty() && go(rest, &n[1..]),
            Some((c, rest)) => n.first() == Some(c) && go(rest, &n[1..]),
        }
    }
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    go(&p, &n)
}

fn modules_of(
    file: &Path,
    mod_dir: &Path,
    module: &str,
    out: &mut Vec<(PathBuf, String)>,
    depth: usize,
) {
    if depth > 32 || out.iter().any(|(f, m)| f == file && m == module) {
        return;
    }
    out.push((file.to_path_buf(), module.to_owned()));
    let Ok(src) = std::fs::read_to_string(file) else {
        return;
    };
    let Ok(ast) = syn::parse_file(&src) else {
        return;
    };
    let beside = file.parent().map(Path::to_path_buf).unwrap_or_default();
    declared(&ast.items, &beside, mod_dir, module, out, depth, false);
}

/// The `mod name;` of `items` (and of their inline modules), followed ([`modules_of`]).
/// `inline`: `items` are an inline module's, where a `#[path]` is relative to `mod_dir` (the
/// file's module directory with the inline modules' names), not to the file's directory.
fn declared(
    items: &[syn::Item],
    beside: &Path,
    mod_dir: &Path,
    module: &str,
    out: &mut Vec<(PathBuf, String)>,
    depth: usize,
    inline: bool,
) {
    for item in items {
        let syn::Item::Mod(m) = item else { continue };
        // `mod r#gen;` is in `gen.rs`: files are named without `r#`.
        let name = syn::ext::IdentExt::unraw(&m.ident).to_string();
        let child = format!("{module}::{name}");
        let path_of = |meta: &syn::Meta| {
            if !meta.path().is_ident("path") {
                return None;
            }
            match meta {
                syn::Meta::NameValue(nv) => match &nv.value {
                    syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(s),
                        ..
                    }) => Some(s.value()),
                    _ => None,
                },
                _ => None,
            }
        };
        // A `#[path]`, or one a `#[cfg_attr(…)]` applies: the first whose file is there (its
        // predicate not weighed).
        let paths: Vec<String> = m
            .attrs
            .iter()
            .flat_map(|a| {
                let applied: Vec<String> = cfg_attr_metas(a).iter().filter_map(path_of).collect();
                path_of(&a.meta).into_iter().chain(applied)
            })
            .collect();
        let base = if inline { mod_dir } else { beside };
        let path_attr = paths
            .iter()
            .find(|p| base.join(p).is_file())
            .or(paths.first())
            .cloned();
        match (&m.content, path_attr) {
            // Inline: its own `mod` declarations are files under `mod_dir/name`, or under the
            // directory its `#[path]` names (`#[path = "dir"] mod m { mod x; }`: `dir/x.rs`,
            // beside the file it is written in, as a file's `#[path]` is, or in the directory
            // of the inline module around it).
            (Some((_, inner)), p) => {
                let dir = p.map_or_else(|| mod_dir.join(&name), |p| base.join(p));
                declared(inner, beside, &dir, &child, out, depth + 1, true);
            }
            (None, Some(p)) => {
                let f = if inline {
                    mod_dir.join(p)
                } else {
                    beside.join(p)
                };
                let d = f.parent().map(Path::to_path_buf).unwrap_or_default();
                modules_of(&f, &d, &child, out, depth + 1);
            }
            (None, None) => {
                let flat = mod_dir.join(format!("{name}.rs"));
                let nested = mod_dir.join(&name).join("mod.rs");
                if flat.is_file() {
                    modules_of(&flat, &mod_dir.join(&name), &child, out, depth + 1);
                } else if nested.is_file() {
                    modules_of(&nested, &mod_dir.join(&name), &child, out, depth + 1);
                }
            }
        }
    }
}

/// Finds every `#[resilient(…)]` function, with the path the runtime gives it.
struct Finder<'n> {
    module: Vec<String>,
    /// In an impl block: its type and trait, as written (or as the alias written stands for).
    self_ty: Option<(String, Option<String>)>,
    /// In an `async` function's body (or a closure or `async` block in any function's): that
    /// function's own path, which the functions declared there are named under
    /// (`m::Client::get::call`), as the runtime names them from the closure in their type
    /// names.
    owner: Option<String>,
    /// In a function's body: its own path, the `owner` of what its closures and `async`
    /// blocks declare.
    enclosing: Option<String>,
    /// In a module declared in a function's body (`fn outer() { mod m { … } }`): its path as
    /// the compiler's type names give it, the function's kept (`shop::outer::m`), which the
    /// runtime names its functions under.
    shown_module: Option<String>,
    found: Vec<(String, syn::ItemFn, proc_macro2::TokenStream)>,
    names: &'n Names,
    /// Attributes placed where the compiler refuses them: line, column and message.
    refused: Vec<(usize, usize, String)>,
}

/// The names modules give types and traits besides their own, by module path: aliases
/// (`type PgClient = Client<Pg>;`, `use api::Api as Gateway;`: the name, what it stands for,
/// and the module to look that up in) and plain imports (`use crate::db::PgClient;`: the
/// module it comes from). The runtime names a method after the type the compiler sees, an
/// alias resolved; so does `list`, as far as the crate's own source says.
#[derive(Default)]
struct Names {
    aliases: BTreeMap<String, BTreeMap<String, (String, String)>>,
    imports: BTreeMap<String, BTreeMap<String, String>>,
    /// Glob imports (`use super::*;`): the modules each module takes every name of.
    globs: BTreeMap<String, Vec<String>>,
    /// The types and traits each module defines: they shadow a glob's names.
    defined: BTreeMap<String, std::collections::BTreeSet<String>>,
}

impl Names {
    /// What `name`, as seen in `module`, stands for: the last segment of the type or trait at
    /// the end of its aliases and imports, or `name` itself.
    fn resolve(&self, module: &str, name: &str) -> String {
        let (mut m, mut n) = (module.to_owned(), name.to_owned());
        // Bounded: a cycle of imports stops here.
        for _ in 0..8 {
            if let Some((to, at)) = self.aliases.get(&m).and_then(|a| a.get(&n)) {
                (m, n) = (at.clone(), to.clone());
            } else if let Some(from) = self.imports.get(&m).and_then(|i| i.get(&n)) {
                m = from.clone();
            } else if let Some(g) = self
                .globs
                .get(&m)
                .filter(|_| !self.defined.get(&m).is_some_and(|d| d.contains(&n)))
                .and_then(|g| {
                    // A name the module has from a glob (`mod pg { use super::*; impl PgClient }`).
                    g.iter().find(|g| {
                        self.aliases.get(*g).is_some_and(|a| a.contains_key(&n))
                            || self.imports.get(*g).is_some_and(|i| i.contains_key(&n))
                    })
                })
            {
                m = g.clone();
            } else {
                break;
            }
        }
        n
    }
}

struct NameCollector<'n> {
    module: Vec<String>,
    names: &'n mut Names,
}

impl NameCollector<'_> {
    fn module_of(&self, prefix: &[String]) -> String {
        module_of(&self.module, prefix)
    }

    /// A type or trait the current module defines.
    fn define(&mut self, ident: &syn::Ident) {
        let here = self.module.join("::");
        self.names
            .defined
            .entry(here)
            .or_default()
            .insert(ident.to_string());
    }

    fn use_tree(&mut self, tree: &syn::UseTree, prefix: &mut Vec<String>) {
        let here = self.module.join("::");
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(&p.tree, prefix);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let from = self.module_of(prefix);
                self.names
                    .imports
                    .entry(here)
                    .or_default()
                    .insert(n.ident.to_string(), from);
            }
            syn::UseTree::Rename(r) if r.rename != "_" => {
                let from = self.module_of(prefix);
                self.names
                    .aliases
                    .entry(here)
                    .or_default()
                    .insert(r.rename.to_string(), (r.ident.to_string(), from));
            }
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(t, prefix);
                }
            }
            syn::UseTree::Glob(_) => {
                let from = self.module_of(prefix);
                self.names.globs.entry(here).or_default().push(from);
            }
            _ => {}
        }
    }
}

impl<'a> Visit<'a> for NameCollector<'_> {
    fn visit_item_mod(&mut self, m: &'a syn::ItemMod) {
        self.module.push(m.ident.to_string());
        syn::visit::visit_item_mod(self, m);
        self.module.pop();
    }

    fn visit_item_type(&mut self, t: &'a syn::ItemType) {
        if let Some(to) = last_segment(&t.ty) {
            let here = self.module.join("::");
            self.names
                .aliases
                .entry(here.clone())
                .or_default()
                .insert(t.ident.to_string(), (to, here));
        }
    }

    fn visit_item_struct(&mut self, i: &'a syn::ItemStruct) {
        self.define(&i.ident);
    }

    fn visit_item_enum(&mut self, i: &'a syn::ItemEnum) {
        self.define(&i.ident);
    }

    fn visit_item_union(&mut self, i: &'a syn::ItemUnion) {
        self.define(&i.ident);
    }

    fn visit_item_trait(&mut self, i: &'a syn::ItemTrait) {
        self.define(&i.ident);
    }

    fn visit_item_use(&mut self, u: &'a syn::ItemUse) {
        self.use_tree(&u.tree, &mut Vec::new());
    }

    // Items in function bodies are not the module's.
    fn visit_block(&mut self, _: &'a syn::Block) {}
}

/// A module's path in segments (`shop::pg` is `shop`, `pg`): `crate` keeps the first, and
/// `super` drops the last, also at a file's top level.
fn segments(module: &str) -> Vec<String> {
    module.split("::").map(str::to_owned).collect()
}

/// The module a path prefix (`crate::db`, `super::api`, `self::x`, `db`) names, seen from
/// `module` (the crate's name first).
fn module_of(module: &[String], prefix: &[String]) -> String {
    let mut m = module.to_vec();
    let mut rest = prefix;
    match prefix.first().map(String::as_str) {
        Some("crate") => {
            m.truncate(1);
            rest = &prefix[1..];
        }
        Some("self") => rest = &prefix[1..],
        _ => {}
    }
    while let Some(("super", tail)) = rest.split_first().map(|(h, t)| (h.as_str(), t)) {
        if m.len() > 1 {
            m.pop();
        }
        rest = tail;
    }
    m.extend(rest.iter().cloned());
    m.join("::")
}

/// The path of a type that is a path (through references and parentheses), not a qualified
/// one (`<T as Tr>::X`).
fn bare_path(ty: &syn::Type) -> Option<&syn::Path> {
    match ty {
        syn::Type::Path(p) if p.qself.is_none() => Some(&p.path),
        syn::Type::Reference(r) => bare_path(&r.elem),
        syn::Type::Paren(p) => bare_path(&p.elem),
        syn::Type::Group(g) => bare_path(&g.elem),
        _ => None,
    }
}

/// `ts` with each of the impl's type parameters written `_`, as the compiler's type names
/// write them.
fn params_as_underscores(
    ts: proc_macro2::TokenStream,
    params: &[String],
) -> proc_macro2::TokenStream {
    use proc_macro2::{Group, Ident, TokenTree};
    ts.into_iter()
        .map(|tt| match tt {
            TokenTree::Ident(id) if params.iter().any(|p| id == p) => {
                TokenTree::Ident(Ident::new("_", id.span()))
            }
            TokenTree::Group(g) => {
                let mut n = Group::new(g.delimiter(), params_as_underscores(g.stream(), params));
                n.set_span(g.span());
                TokenTree::Group(n)
            }
            other => other,
        })
        .collect()
}

/// Whether the type is a single name (`C`, `&C`), as a type parameter is written.
fn is_bare_name(ty: &syn::Type) -> bool {
    bare_path(ty).is_some_and(|p| p.leading_colon.is_none() && p.segments.len() == 1)
}

/// The last segment of a type's path (`Client` of `&'a db::Client<Pg>`), if it is a path.
fn last_segment(ty: &syn::Type) -> Option<String> {
    match ty {
        syn::Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
        syn::Type::Reference(r) => last_segment(&r.elem),
        syn::Type::Paren(p) => last_segment(&p.elem),
        syn::Type::Group(g) => last_segment(&g.elem),
        _ => None,
    }
}

/// The arguments of a function's `#[resilient(…)]`, also when a `#[cfg_attr(…)]` applies it
/// (its predicate not weighed: checked as if it held).
fn resilient_args(attrs: &[syn::Attribute]) -> Option<proc_macro2::TokenStream> {
    let args = |meta: &syn::Meta| {
        let last = meta.path().segments.last()?;
        if last.ident != "resilient" {
            return None;
        }
        Some(match meta {
            syn::Meta::List(l) => l.tokens.clone(),
            _ => proc_macro2::TokenStream::new(),
        })
    };
    attrs
        .iter()
        .find_map(|a| args(&a.meta).or_else(|| cfg_attr_metas(a).iter().find_map(args)))
}

impl Finder<'_> {
    /// `ty` as written, or the name of what it stands for when it is an alias.
    fn resolved(&self, ty: &syn::Type) -> String {
        match bare_path(ty) {
            Some(p) => {
                let to = self.resolved_path(p);
                if p.segments.last().is_some_and(|l| l.ident == to) {
                    ty.to_token_stream().to_string()
                } else {
                    to
                }
            }
            None => ty.to_token_stream().to_string(),
        }
    }

    /// `p` as written, or the name of what it stands for when it is an alias, looked up in
    /// the module its prefix names (`crate::types::PgClient`), else in the current one.
    fn resolved_path(&self, p: &syn::Path) -> String {
        let written = p.to_token_stream().to_string();
        let Some(last) = p.segments.last().map(|s| s.ident.to_string()) else {
            return written;
        };
        if p.leading_colon.is_some() {
            return written;
        }
        let prefix: Vec<String> = p
            .segments
            .iter()
            .take(p.segments.len() - 1)
            .map(|s| s.ident.to_string())
            .collect();
        // A prefix starting at a module imported here (`use crate::types;` then
        // `impl types::PgClient`) starts there.
        let here = self.module.join("::");
        let imported = prefix
            .first()
            .filter(|f| !matches!(f.as_str(), "crate" | "self" | "super"))
            .and_then(|f| self.names.imports.get(&here)?.get(f));
        let module = match imported {
            Some(from) => {
                let mut m = from.clone();
                for seg in &prefix {
                    m.push_str("::");
                    m.push_str(seg);
                }
                m
            }
            None => module_of(&self.module, &prefix),
        };
        let to = self.names.resolve(&module, &last);
        if to == last { written } else { to }
    }

    fn path_of(&self, name: &str) -> String {
        let m = self.module.join("::");
        if let Some(owner) = &self.owner {
            return format!("{owner}::{name}").replace("r#", "");
        }
        let path = match (&self.self_ty, &self.shown_module) {
            (Some((ty, tr)), _) => resilience_spec::paths::method_path(&m, ty, tr.as_deref(), name),
            (None, Some(shown)) => format!("{shown}::{name}"),
            (None, None) if m.is_empty() => name.to_owned(),
            (None, None) => format!("{m}::{name}"),
        };
        // Raw identifiers (`mod r#async`, `fn r#type`) as the compiler's type names write
        // them, and the runtime with them: without `r#` (`#` is in no other path).
        path.replace("r#", "")
    }
}

impl<'a> Visit<'a> for Finder<'_> {
    fn visit_item_mod(&mut self, m: &'a syn::ItemMod) {
        // Its own module path, neither the function's nor the impl's it is written in; in a
        // function's body, shown under that function's path (see `shown_module`).
        let (saved_ty, saved_owner) = (self.self_ty.take(), self.owner.take());
        let saved_enclosing = self.enclosing.take();
        let shown = saved_enclosing
            .as_ref()
            .or(self.shown_module.as_ref())
            .map(|around| format!("{around}::{}", m.ident));
        let saved_shown = std::mem::replace(&mut self.shown_module, shown);
        self.module.push(m.ident.to_string());
        syn::visit::visit_item_mod(self, m);
        self.module.pop();
        self.self_ty = saved_ty;
        self.owner = saved_owner;
        self.enclosing = saved_enclosing;
        self.shown_module = saved_shown;
    }

    fn visit_item_impl(&mut self, i: &'a syn::ItemImpl) {
        // An impl for one of its own type parameters (`impl<C: Http> Api for C`, a blanket
        // impl): the compiler's type name writes the parameter `_`, and so does the path.
        // So is a parameter inside the type where the path shows it (`[T]`, `&[T]`: `[_]`).
        let params: Vec<String> = i
            .generics
            .type_params()
            .map(|p| p.ident.to_string())
            .collect();
        let ty = if last_segment(&i.self_ty).is_some_and(|l| params.contains(&l))
            && is_bare_name(&i.self_ty)
        {
            "_".to_owned()
        } else if params.is_empty() {
            self.resolved(&i.self_ty)
        } else {
            let resolved = self.resolved(&i.self_ty);
            if resolved == i.self_ty.to_token_stream().to_string() {
                params_as_underscores(i.self_ty.to_token_stream(), &params).to_string()
            } else {
                resolved
            }
        };
        let tr = i.trait_.as_ref().map(|(t, _)| self.resolved_path(t));
        let saved = self.self_ty.replace((ty, tr));
        // Methods are named after their type, even in a function's body.
        let saved_owner = self.owner.take();
        let async_trait = rewritten_by_async_trait(&i.attrs);
        for item in &i.items {
            if let syn::ImplItem::Fn(f) = item {
                self.once(&f.attrs, &f.sig.ident);
            }
            if let syn::ImplItem::Fn(f) = item
                && async_trait
                && resilient_args(&f.attrs).is_some()
            {
                self.after_async_trait(&f.sig);
            } else if let syn::ImplItem::Fn(f) = item
                && let Some(args) = resilient_args(&f.attrs)
            {
                let func = syn::ItemFn {
                    attrs: Vec::new(),
                    vis: f.vis.clone(),
                    modifiers: f.modifiers.clone(),
                    sig: f.sig.clone(),
                    block: Box::new(f.block.clone()),
                };
                let path = self.path_of(&f.sig.ident.to_string());
                self.found.push((path, func, args));
            }
            if let syn::ImplItem::Fn(f) = item {
                self.visit_body(&f.sig, &f.block);
            }
        }
        self.self_ty = saved;
        self.owner = saved_owner;
    }

    fn visit_item_trait(&mut self, t: &'a syn::ItemTrait) {
        // A default method, named as the runtime names it: `module::Trait::name`.
        let saved = self.self_ty.replace((t.ident.to_string(), None));
        let saved_owner = self.owner.take();
        for item in &t.items {
            // On a method without a body the attribute has nothing to wrap: the compiler
            // refuses it, and so does the check.
            if let syn::TraitItem::Fn(f) = item
                && f.default.is_none()
                && resilient_args(&f.attrs).is_some()
            {
                let at = f.sig.ident.span().start();
                self.refused.push((
                    at.line,
                    at.column + 1,
                    format!(
                        "{}: #[resilient] goes on a method with a body: a trait's default method, or each impl's",
                        self.path_of(&f.sig.ident.to_string())
                    ),
                ));
            }
            if let syn::TraitItem::Fn(f) = item
                && f.default.is_some()
                && rewritten_by_async_trait(&t.attrs)
                && resilient_args(&f.attrs).is_some()
            {
                self.after_async_trait(&f.sig);
            } else if let syn::TraitItem::Fn(f) = item
                && let Some(block) = &f.default
                && let Some(args) = resilient_args(&f.attrs)
            {
                let func = syn::ItemFn {
                    attrs: Vec::new(),
                    vis: syn::Visibility::Inherited,
                    sig: f.sig.clone(),
                    block: Box::new(block.clone()),
                    ..syn::parse_quote!(
                        fn placeholder() {}
                    )
                };
                let path = self.path_of(&f.sig.ident.to_string());
                self.found.push((path, func, args));
            }
            if let syn::TraitItem::Fn(f) = item
                && let Some(block) = &f.default
            {
                self.once(&f.attrs, &f.sig.ident);
                self.visit_body(&f.sig, block);
            }
        }
        self.self_ty = saved;
        self.owner = saved_owner;
    }

    fn visit_expr_closure(&mut self, c: &'a syn::ExprClosure) {
        self.in_closure(|v| syn::visit::visit_expr_closure(v, c));
    }

    fn visit_expr_async(&mut self, a: &'a syn::ExprAsync) {
        self.in_closure(|v| syn::visit::visit_expr_async(v, a));
    }

    fn visit_item_fn(&mut self, f: &'a syn::ItemFn) {
        self.once(&f.attrs, &f.sig.ident);
        if let Some(args) = resilient_args(&f.attrs) {
            let mut func = f.clone();
            func.attrs.clear();
            self.found
                .push((self.path_of(&f.sig.ident.to_string()), func, args));
        }
        self.visit_body(&f.sig, &f.block);
    }
}

/// Whether an impl's or a trait's attributes hold `#[async_trait]` (`async_trait::async_trait`,
/// under `cfg_attr` too): it turns each method into a plain fn returning a boxed future before
/// `#[resilient]` sees it, which the compiler then refuses.
fn rewritten_by_async_trait(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path()
            .segments
            .last()
            .is_some_and(|s| s.ident == "async_trait")
            || cfg_attr_metas(a).iter().any(|m| {
                m.path()
                    .segments
                    .last()
                    .is_some_and(|s| s.ident == "async_trait")
            })
    })
}

/// The attributes a `#[cfg_attr(predicate, attr, …)]` applies (its predicate not weighed, as
/// a `#[cfg]` is not); none for another attribute.
fn cfg_attr_metas(a: &syn::Attribute) -> Vec<syn::Meta> {
    if !a.path().is_ident("cfg_attr") {
        return Vec::new();
    }
    a.parse_args_with(syn::punctuated::Punctuated::<syn::Meta, syn::Token![,]>::parse_terminated)
        .map(|metas| metas.into_iter().skip(1).collect())
        .unwrap_or_default()
}

impl Finder<'_> {
    /// A `#[resilient]` method of an impl or trait under `#[async_trait]`: the compiler refuses
    /// it with these words, and so does the check.
    fn after_async_trait(&mut self, sig: &syn::Signature) {
        let at = sig.fn_token.span.start();
        self.refused.push((
            at.line,
            at.column + 1,
            format!(
                "{}: #[resilient] sees this method after #[async_trait] turned it into a plain fn returning a boxed future\n\
                 help: drop #[async_trait] (traits take `async fn` natively since Rust 1.75), or put #[resilient] on an inherent `async fn` and call it from the trait method",
                self.path_of(&sig.ident.to_string())
            ),
        ));
    }

    /// `#[resilient]` given twice on one function is refused by the compiler: so here.
    fn once(&mut self, attrs: &[syn::Attribute], name: &syn::Ident) {
        let mut given = attrs.iter().filter(|a| {
            a.path()
                .segments
                .last()
                .is_some_and(|s| s.ident == "resilient")
        });
        if let (Some(_), Some(again)) = (given.next(), given.next()) {
            let at = again.pound_token.span.start();
            self.refused.push((
                at.line,
                at.column + 1,
                format!(
                    "{}: #[resilient] is given twice on this function: each would retry around the other",
                    self.path_of(&name.to_string())
                ),
            ));
        }
    }

    /// The functions declared in the body of the function `sig` names (a `#[tokio::test]`'s
    /// helper): the runtime names them after it, `module::name::inner`, as it would a type;
    /// in an `async` function's body, after that function's own path
    /// (`module::Client::get::inner`), as the body's closure in their type names tells it.
    fn visit_body(&mut self, sig: &syn::Signature, block: &syn::Block) {
        let name = sig.ident.to_string();
        let own = self.path_of(&name);
        let saved_enclosing = self.enclosing.replace(own.clone());
        let (saved_ty, saved_owner) = if sig.asyncness.is_some() {
            (self.self_ty.take(), self.owner.replace(own))
        } else {
            (self.self_ty.replace((name, None)), self.owner.take())
        };
        syn::visit::visit_block(self, block);
        self.self_ty = saved_ty;
        self.owner = saved_owner;
        self.enclosing = saved_enclosing;
    }

    /// A closure or an `async` block: what it declares is named under the function it is in
    /// (the compiler's type names show the closure, as an `async fn`'s body's).
    fn in_closure(&mut self, visit: impl FnOnce(&mut Self)) {
        if self.owner.is_none()
            && let Some(e) = self.enclosing.clone()
        {
            let saved = (self.self_ty.take(), self.owner.replace(e));
            visit(self);
            (self.self_ty, self.owner) = saved;
        } else {
            visit(self);
        }
    }
}

/// The names a body calls: `name(` and `.name(`.
fn calls_in(ts: proc_macro2::TokenStream) -> Vec<String> {
    calls_within(ts, false)
}

/// [`calls_in`]; `in_macro`: the tokens are a macro's (`join!(…)`), where a future is written
/// without its `.await`.
fn calls_within(ts: proc_macro2::TokenStream, in_macro: bool) -> Vec<String> {
    use proc_macro2::{Delimiter, TokenTree};
    let tokens: Vec<TokenTree> = ts.into_iter().collect();
    let mut out = Vec::new();
    for (i, tt) in tokens.iter().enumerate() {
        match tt {
            TokenTree::Group(g) => {
                let macro_args = matches!(tokens.get(i.wrapping_sub(1)), Some(TokenTree::Punct(p)) if p.as_char() == '!');
                out.extend(calls_within(g.stream(), macro_args));
            }
            TokenTree::Ident(id) => {
                let rest = tokens.get(i + 2..).unwrap_or_default();
                let whole_argument = in_macro
                    && matches!(rest.first(), None | Some(TokenTree::Punct(_)))
                    && !is_dot(rest.first());
                if matches!(tokens.get(i + 1), Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Parenthesis)
                    && (!is_dot(tokens.get(i.wrapping_sub(1))) || awaited(rest) || whole_argument)
                {
                    out.push(id.to_string());
                }
            }
            _ => {}
        }
    }
    out
}

fn is_dot(tt: Option<&proc_macro2::TokenTree>) -> bool {
    matches!(tt, Some(proc_macro2::TokenTree::Punct(p)) if p.as_char() == '.')
}

/// Whether what follows a method call awaits it (`.await`, perhaps after `.instrument(…)`,
/// `.boxed()`, …): an annotated method is async, while a request builder's `.get(url)` or a
/// map's `.get(&k)` of the same name is not awaited where it is written.
fn awaited(rest: &[proc_macro2::TokenTree]) -> bool {
    use proc_macro2::TokenTree;
    const ADAPTERS: [&str; 4] = ["instrument", "in_current_span", "boxed", "fuse"];
    let mut i = 0;
    while is_dot(rest.get(i)) {
        match (rest.get(i + 1), rest.get(i + 2)) {
            (Some(TokenTree::Ident(id)), _) if id == "await" => return true,
            (Some(TokenTree::Ident(id)), Some(TokenTree::Group(_)))
                if ADAPTERS.contains(&id.to_string().as_str()) =>
            {
                i += 3;
            }
            _ => return false,
        }
    }
    false
}

/// The names a body calls where their failure may not end the body at once: every call site
/// but `name(…)` followed by `.await`, then methods that keep the error (`map_err`,
/// `context`, …), then `?` or the end of the body (its last expression).
fn handled_in(ts: proc_macro2::TokenStream) -> Vec<String> {
    use proc_macro2::{Delimiter, TokenTree};
    // Methods after which the failure no longer ends the body.
    const HANDLING: [&str; 11] = [
        "unwrap_or",
        "unwrap_or_default",
        "unwrap_or_else",
        "ok",
        "err",
        "is_ok",
        "is_err",
        "or",
        "or_else",
        "map_or",
        "map_or_else",
    ];
    let tokens: Vec<TokenTree> = ts.into_iter().collect();
    let punct =
        |i: usize, c: char| matches!(tokens.get(i), Some(TokenTree::Punct(p)) if p.as_char() == c);
    let paren = |i: usize| matches!(tokens.get(i), Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Parenthesis);
    let mut out = Vec::new();
    for (i, tt) in tokens.iter().enumerate() {
        match tt {
            TokenTree::Group(g) => out.extend(handled_in(g.stream())),
            TokenTree::Ident(id) => {
                if !paren(i + 1) {
                    continue;
                }
                // Walk `.await` and `.method(…)` after the call.
                let mut j = i + 2;
                let mut kept = true;
                while punct(j, '.') {
                    match tokens.get(j + 1) {
                        Some(TokenTree::Ident(m)) => {
                            kept &= !HANDLING.contains(&m.to_string().as_str());
                            j += if paren(j + 2) { 3 } else { 2 };
                        }
                        _ => break,
                    }
                }
                let propagated = kept && (punct(j, '?') || (j > i + 2 && j == tokens.len()));
                if !propagated {
                    out.push(id.to_string());
                }
            }
            _ => {}
        }
    }
    out
}

// --- What the policy means ---------------------------------------------------------------------

/// How many attempts that each time out fit in the deadline, with no backoff between them
/// (the most: a backoff only leaves fewer), where no retry begins with less than a tenth of
/// `timeout` left: attempt `k` begins `(k - 1) × timeout` in.
fn attempts_within_deadline(timeout: Duration, deadline: Duration) -> u32 {
    let per = timeout.as_nanos();
    if per == 0 {
        return 1;
    }
    let room = deadline.saturating_sub(timeout / 10).as_nanos();
    u32::try_from(room / per).map_or(u32::MAX, |n| n.saturating_add(1))
}

/// The attempts of one call against a dependency that fails, however it fails: where its
/// policy may resend what it sent (a safe method, a keyed call, an `idempotent` PUT or DELETE:
/// `may_resend`, the compile-time rule), every attempt against a dependency that fails at
/// once (a reset, a 503), where it retries such a failure; as many as fit in the deadline
/// against one that hangs, where it retries a timeout (each times out). A connect failure
/// sends nothing: a POST with `retry_on = [connect]` sends once.
fn failing_attempts(f: &Function) -> u32 {
    let s = &f.analysis.settings;
    let retries = |fast: bool| retries_failure(f, fast);
    if !resendable(f) {
        1
    } else if retries(true) {
        s.max_attempts.value
    } else if retries(false) {
        s.max_attempts
            .value
            .min(attempts_within_deadline(s.timeout.value, s.deadline.value))
    } else {
        1
    }
}

/// Whether `f`'s policy may resend what it sent (a safe method, a keyed call, an `idempotent`
/// PUT or DELETE: `may_resend`, the compile-time rule).
fn resendable(f: &Function) -> bool {
    let s = &f.analysis.settings;
    let keyed = !matches!(s.idempotency_key.value, KeyModel::None);
    f.analysis
        .method
        .as_ref()
        .is_none_or(|m| resilience_spec::may_resend(m.value, keyed, s.idempotent.value))
}

/// Whether `f`'s `retry_on` retries a failure at once (`fast`: a reset, a 503; not a connect
/// failure, which sent nothing) or a hang (a timeout).
fn retries_failure(f: &Function, fast: bool) -> bool {
    use resilience_policy::model::RetryItem;
    f.analysis.settings.retry_on.value.iter().any(|r| {
        let timeout = r.value == RetryItem::Timeout;
        if fast {
            !timeout && r.value != RetryItem::Connect
        } else {
            timeout
        }
    })
}

/// Whether `f` retries a dependency's failure however it fails (at once, or a hang), as far as
/// its attempts go: a failure it does not retry (a timeout outside its `retry_on`) is its
/// caller's to retry, each of the caller's attempts running it again.
fn retries_every_failure(f: &Function) -> bool {
    f.analysis.settings.max_attempts.value > 1
        && resendable(f)
        && retries_failure(f, true)
        && retries_failure(f, false)
}

/// The asks for a replay one keyed call may add, when the server answers "still in progress"
/// (409 with `Retry-After`) until its deadline: outside `max_attempts`, at most one each
/// 100 ms (the runtime's floor between asks). Each is answered by the server's layer without
/// running the handler, but reaches its front door and its limits. `None`: not keyed.
fn asks(f: &Function) -> Option<u32> {
    let s = &f.analysis.settings;
    if matches!(s.idempotency_key.value, KeyModel::None) {
        return None;
    }
    let n = s.deadline.value.as_millis() / 100;
    Some(u32::try_from(n).unwrap_or(u32::MAX))
}

/// Attempts × timeout plus every backoff at its largest, bounded by the deadline.
fn worst_case(f: &Function) -> Duration {
    let s = &f.analysis.settings;
    let n = s.max_attempts.value;
    let b = &s.backoff;
    let timeout = s.timeout.value;
    // A hedged round: its last hedge starts `max` delays in and has a whole `timeout` of its
    // own (its `delay` is shorter than the timeout: a longer one is refused).
    let round = match &s.hedge.value {
        Some(h) => timeout.saturating_add(h.delay.value.saturating_mul(h.max.value)),
        None => timeout,
    };
    // The waits for a bulkhead or concurrency-limit slot, then a rate-limit permit, count
    // against the deadline too.
    let shared = &f.analysis.shared;
    let waits = [
        shared.bulkhead.as_ref().map(|(_, b)| b.max_wait),
        shared.concurrency.as_ref().map(|(_, c)| c.max_wait),
        // A shared limit waits for Redis's answer first, whatever its `max_wait`.
        shared.rate_limit.as_ref().map(|(_, r)| match r.store {
            resilience_policy::validate::RateStoreM::Redis => r
                .max_wait
                .saturating_add(resilience_spec::packed::RATE_STORE_TIMEOUT),
            resilience_policy::validate::RateStoreM::Local => r.max_wait,
        }),
    ]
    .into_iter()
    .flatten()
    .fold(Duration::ZERO, Duration::saturating_add);
    let mut total = round.saturating_mul(n).saturating_add(waits);
    let decorrelated = b.jitter.value == resilience_policy::model::Jitter::Decorrelated
        && b.kind.value != BackoffKind::Constant;
    let mut delay = if decorrelated {
        b.initial.value.saturating_mul(3)
    } else {
        b.initial.value
    };
    // A constant backoff waits `initial` every time: its `max` is never used (the runtime's
    // `BackoffState`), however it compares.
    let cap = if b.kind.value == BackoffKind::Constant {
        Duration::MAX
    } else {
        b.max.value
    };
    for _ in 1..n {
        total = total.saturating_add(delay.min(cap));
        // Once the delay reaches `max` it stays there (and growing it further could overflow).
        // Decorrelated jitter draws up to three times the previous delay, whatever the
        // multiplier.
        if delay < b.max.value {
            let factor = if decorrelated {
                3.0
            } else if b.kind.value == BackoffKind::Exponential {
                f64::from(b.multiplier_milli.value) / 1000.0
            } else {
                1.0
            };
            let grown = delay.as_secs_f64() * factor;
            delay = Duration::try_from_secs_f64(grown)
                .unwrap_or(b.max.value)
                .min(b.max.value);
        }
    }
    total.min(s.deadline.value)
}

/// Requests one call sends to a dependency that fails (it hangs, or fails at once), through
/// nested annotated calls: an inner call that retries is not retried around (one layer
/// retries), unless the body handles its failure and goes on (then a later failure of the
/// body runs it again); an inner call without retries is retried by the outer one.
fn amplification(f: &Function, all: &[Function]) -> u32 {
    let mut memo = BTreeMap::new();
    amplification_of(f, all, &mut memo, &mut Vec::new())
}

/// The requests of one of `f`'s attempts against a dependency that fails: it sends its hedges
/// too, one a `delay` while one of the round still runs (its `delay` is shorter than the
/// timeout: a longer one is refused).
fn hedged_of(f: &Function) -> u32 {
    1 + f
        .analysis
        .settings
        .hedge
        .value
        .as_ref()
        .map_or(0, |h| h.max.value)
}

/// The annotated functions `f` calls, matched by name (`f` itself left out).
fn callees<'a>(f: &'a Function, all: &'a [Function]) -> impl Iterator<Item = &'a Function> {
    all.iter()
        .filter(move |g| f.calls.contains(&g.name) && g.path != f.path)
}

/// [`amplification`], each function's figure worked out once (`memo`, by path): callees are
/// matched by name, and layered clients whose methods of one name call each other
/// (`self.next().fetch(k)`) would otherwise be walked once per path through them, in
/// exponential time. A function already on the way (`visiting`: a call cycle) counts its own
/// attempts only.
fn amplification_of<'a>(
    f: &'a Function,
    all: &'a [Function],
    memo: &mut BTreeMap<&'a str, u32>,
    visiting: &mut Vec<&'a str>,
) -> u32 {
    if let Some(&known) = memo.get(f.path.as_str()) {
        return known;
    }
    let hedged = hedged_of(f);
    let own = failing_attempts(f).saturating_mul(hedged);
    let mut worst = own;
    if visiting.contains(&f.path.as_str()) {
        return worst;
    }
    visiting.push(f.path.as_str());
    for callee in callees(f, all) {
        let inner = amplification_of(callee, all, memo, visiting);
        let handled = f.handled.contains(&callee.name);
        // Called at two sites whose failure does not end the body (`join!(status(),
        // status())`, `status().await.unwrap_or_default()` twice), twice the requests; at
        // sites that each end it (`item(a).await?` then `item(b).await?`), the first failure
        // stops the rest.
        let sites = if handled {
            f.calls.iter().filter(|c| **c == callee.name).count()
        } else {
            1
        };
        let inner = inner.saturating_mul(u32::try_from(sites).unwrap_or(u32::MAX));
        // One layer retries; but each hedge runs the body, and the callee, again. Not when
        // the callee's retries may outlast this function's attempt: its timeout then ends
        // the attempt, the callee with it, and is this function's own to retry.
        // Then each of this function's attempts sends what of the callee's fits in it.
        let timeout = f.analysis.settings.timeout.value;
        let cut = worst_case(callee) >= timeout;
        // What one of the callee's attempts sends (its hedges, its own nested calls). (Its own
        // nested calls may retry inside one of its attempts: what the most demanding of them
        // sends, each hedge of the callee sending it again.)
        let per_attempt = |memo: &mut BTreeMap<&'a str, u32>, visiting: &mut Vec<&'a str>| {
            let mut nested = 1u32;
            for g in callees(callee, all) {
                nested = nested.max(amplification_of(g, all, memo, visiting));
            }
            nested.saturating_mul(hedged_of(callee))
        };
        let through = if callee.analysis.settings.max_attempts.value > 1 && !handled && !cut {
            // Retried by the callee; a failure it does not retry (a hang outside its
            // `retry_on`) is this function's to retry, each of its attempts running the
            // callee's once.
            let retried_inside = inner.saturating_mul(hedged);
            if retries_every_failure(callee) {
                retried_inside
            } else {
                retried_inside.max(own.saturating_mul(per_attempt(memo, visiting)))
            }
        } else if cut && !handled {
            // Of the callee's attempts, those that fit in this one's time, each with what one
            // of the callee's attempts sends.
            let attempts = failing_attempts(callee).max(1);
            let per_attempt = per_attempt(memo, visiting);
            let fits = attempts.min(attempts_within_deadline(
                callee.analysis.settings.timeout.value,
                timeout,
            ));
            // The most of three ways it goes: it fails at once, all its attempts inside one of
            // this function's (then not retried around it; each hedge of this function runs it
            // again); it hangs, retries inside this attempt, and this attempt's end cuts it
            // (its failure, not retried around it either); or it is cut before it could retry
            // (its first attempt all the time left holds, or a backoff that did not fit), and
            // this function's attempts each run it again.
            inner
                .saturating_mul(hedged)
                .max(fits.saturating_mul(per_attempt).saturating_mul(hedged))
                .max(own.saturating_mul(per_attempt))
        } else {
            own.saturating_mul(inner)
        };
        worst = worst.max(through);
    }
    visiting.pop();
    memo.insert(f.path.as_str(), worst);
    worst
}

fn origin(o: &Origin) -> String {
    o.to_string()
}

fn method(f: &Function) -> (String, String) {
    match &f.analysis.method {
        Some(m) => (m.value.as_str().to_owned(), origin(&m.origin)),
        None => ("?".into(), "not declared, not inferred".into()),
    }
}

fn retry_on(f: &Function) -> String {
    let v: Vec<String> = f
        .analysis
        .settings
        .retry_on
        .value
        .iter()
        .map(|i| i.value.render())
        .collect();
    format!("[{}]", v.join(", "))
}

fn key(f: &Function) -> String {
    match &f.analysis.settings.idempotency_key.value {
        KeyModel::None => "none".into(),
        KeyModel::Auto => "auto".into(),
        KeyModel::Param(p) => p.clone(),
    }
}

fn state(r: &StateRef, shared: Option<&str>) -> String {
    match (r, shared) {
        (StateRef::Off, _) => "off".into(),
        (StateRef::Default, _) => "own".into(),
        (StateRef::Named(n), _) => n.clone(),
        (StateRef::Inline(_), Some(n)) if !n.is_empty() => n.to_owned(),
        (StateRef::Inline(_), _) => "own".into(),
    }
}

/// The settings of a function's policy that `list`'s table has no column for: the backoff,
/// `max_retry_after`, `idempotent`, the budget, the rate limit, the hedge, the fallback and the
/// client, as they are in effect.
fn rest_of_policy(f: &Function) -> String {
    let s = &f.analysis.settings;
    let sh = &f.analysis.shared;
    let b = &s.backoff;
    let jitter = match format!("{:?}", b.jitter.value).to_lowercase() {
        j if j == "none" => "no".to_owned(),
        j => j,
    };
    let backoff = if b.kind.value == BackoffKind::Constant {
        // A constant backoff has no `max` or `multiplier`: its step is `initial`.
        format!(
            "backoff constant {} {jitter} jitter",
            fmt_duration(b.initial.value)
        )
    } else {
        format!(
            "backoff exponential {}..{} ×{} {jitter} jitter",
            fmt_duration(b.initial.value),
            fmt_duration(b.max.value),
            f64::from(b.multiplier_milli.value) / 1000.0,
        )
    };
    let mut parts = vec![
        backoff,
        format!("max_retry_after {}", fmt_duration(s.max_retry_after.value)),
        format!(
            "budget {}",
            state(&s.budget.value, sh.budget.as_ref().map(|b| b.0.as_str()))
        ),
        format!(
            "rate_limit {}",
            state(
                &s.rate_limit.value,
                sh.rate_limit.as_ref().map(|b| b.0.as_str())
            )
        ),
    ];
    if s.idempotent.value {
        parts.push("idempotent".into());
    }
    if let Some(n) = asks(f) {
        parts.push(format!(
            "asks for a replay still in progress: up to {n} more requests within the deadline"
        ));
    }
    if let Some(h) = &s.hedge.value {
        parts.push(format!(
            "hedge after {}, at most {}",
            fmt_duration(h.delay.value),
            h.max.value
        ));
    }
    if let Some(fb) = &s.fallback {
        parts.push(format!(
            "fallback {} on [{}]",
            fb.value,
            s.fallback_on.value.1.join(", ")
        ));
    }
    if let Some(c) = &s.client {
        parts.push(format!("client {}", c.value));
    }
    parts.join("; ")
}

/// What bounds the calls in flight: a fixed bulkhead, an adaptive limit (its range, where it
/// starts, the latency that counts as overload), or nothing.
fn in_flight(f: &Function) -> String {
    let sh = &f.analysis.shared;
    if let Some((_, c)) = &sh.concurrency {
        format!(
            "aimd {}..={} from {}, slow at {}",
            c.min,
            c.max,
            c.initial,
            fmt_duration(c.latency)
        )
    } else if let Some((_, b)) = &sh.bulkhead {
        format!("bulkhead {}", b.max_concurrent)
    } else {
        "-".into()
    }
}

fn list(krate: &Crate, json: bool) {
    let all = &krate.functions;
    if json {
        let items: Vec<serde_json::Value> = all
            .iter()
            .map(|f| {
                let s = &f.analysis.settings;
                let (m, m_from) = method(f);
                let sh = &f.analysis.shared;
                let set = |v: String, o: &Origin| serde_json::json!({ "value": v, "from": origin(o) });
                serde_json::json!({
                    "function": f.path,
                    "file": f.file,
                    "line": f.line,
                    "policy": f.analysis.policy_name,
                    "method": { "value": m, "from": m_from },
                    "timeout": set(fmt_duration(s.timeout.value), &s.timeout.origin),
                    "deadline": set(fmt_duration(s.deadline.value), &s.deadline.origin),
                    "max_attempts": set(s.max_attempts.value.to_string(), &s.max_attempts.origin),
                    "retry_on": set(retry_on(f), &s.retry_on.origin),
                    "idempotency_key": set(key(f), &s.idempotency_key.origin),
                    "backoff": {
                        "kind": set(format!("{:?}", s.backoff.kind.value).to_lowercase(), &s.backoff.kind.origin),
                        "initial": set(fmt_duration(s.backoff.initial.value), &s.backoff.initial.origin),
                        "max": set(fmt_duration(s.backoff.max.value), &s.backoff.max.origin),
                        "multiplier": set(format!("{}", f64::from(s.backoff.multiplier_milli.value) / 1000.0), &s.backoff.multiplier_milli.origin),
                        "jitter": set(format!("{:?}", s.backoff.jitter.value).to_lowercase(), &s.backoff.jitter.origin),
                    },
                    "max_retry_after": set(fmt_duration(s.max_retry_after.value), &s.max_retry_after.origin),
                    "idempotent": set(s.idempotent.value.to_string(), &s.idempotent.origin),
                    "hedge": s.hedge.value.as_ref().map(|h| serde_json::json!({
                        "delay": fmt_duration(h.delay.value),
                        "max": h.max.value,
                        "from": origin(&s.hedge.origin),
                    })),
                    "fallback": s.fallback.as_ref().map(|fb| serde_json::json!({
                        "function": fb.value,
                        "on": s.fallback_on.value.1,
                        "from": origin(&fb.origin),
                    })),
                    "client": s.client.as_ref().map(|c| set(c.value.clone(), &c.origin)),
                    // Each as the table shows it, with its settings and where it came from; `null`
                    // when the function has none.
                    "budget": sh.budget.as_ref().map(|(n, b)| serde_json::json!({
                        "name": state(&s.budget.value, Some(n.as_str())),
                        "ratio": b.ratio,
                        "min_per_sec": b.min_per_sec,
                        "from": origin(&s.budget.origin),
                    })),
                    "breaker": sh.breaker.as_ref().map(|(n, b)| serde_json::json!({
                        "name": state(&s.breaker.value, Some(n.as_str())),
                        "failure_rate": b.spec.failure_rate,
                        "min_calls": b.spec.min_calls,
                        "window": (b.spec.window_for.is_zero()).then_some(b.spec.window),
                        "window_for": (!b.spec.window_for.is_zero()).then(|| fmt_duration(b.spec.window_for)),
                        "open_for": fmt_duration(b.spec.open_for),
                        "half_open_calls": b.spec.half_open_calls,
                        "slow_call_duration": (!b.spec.slow_call_duration.is_zero()).then(|| fmt_duration(b.spec.slow_call_duration)),
                        "slow_call_rate": (!b.spec.slow_call_duration.is_zero()).then_some(b.spec.slow_call_rate),
                        "from": origin(&s.breaker.origin),
                    })),
                    "bulkhead": sh.bulkhead.as_ref().map(|(n, b)| serde_json::json!({
                        "name": state(&s.bulkhead.value, Some(n.as_str())),
                        "max_concurrent": b.max_concurrent,
                        "max_wait": fmt_duration(b.max_wait),
                        "from": origin(&s.bulkhead.origin),
                    })),
                    "rate_limit": sh.rate_limit.as_ref().map(|(n, r)| serde_json::json!({
                        "name": state(&s.rate_limit.value, Some(n.as_str())),
                        "rate": r.rate,
                        "per": fmt_duration(r.per),
                        "burst": r.burst,
                        "max_wait": fmt_duration(r.max_wait),
                        "store": format!("{:?}", r.store).to_lowercase(),
                        "from": origin(&s.rate_limit.origin),
                    })),
                    "concurrency_limit": f.analysis.shared.concurrency.as_ref().map(|(n, c)| serde_json::json!({
                        "name": state(&s.concurrency_limit.value, Some(n.as_str())),
                        "kind": "aimd",
                        "initial": c.initial,
                        "min": c.min,
                        "max": c.max,
                        "latency": fmt_duration(c.latency),
                        "backoff": c.backoff,
                        "max_wait": fmt_duration(c.max_wait),
                        "from": origin(&s.concurrency_limit.origin),
                    })),
                    "worst_case_ms": worst_case(f).as_millis() as u64,
                    "requests_per_call_worst_case": amplification(f, all),
                    "asks_per_call_worst_case": asks(f),
                })
            })
            .collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::Value::Array(items)).unwrap_or_default()
        );
        return;
    }
    let head = [
        "function",
        "method",
        "timeout",
        "deadline",
        "attempts",
        "retry_on",
        "key",
        "breaker",
        "in flight",
        "worst case",
        "requests/call",
    ];
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|f| {
            let s = &f.analysis.settings;
            vec![
                f.path.clone(),
                method(f).0,
                fmt_duration(s.timeout.value),
                fmt_duration(s.deadline.value),
                s.max_attempts.value.to_string(),
                retry_on(f),
                key(f),
                state(
                    &s.breaker.value,
                    f.analysis.shared.breaker.as_ref().map(|b| b.0.as_str()),
                ),
                in_flight(f),
                fmt_duration(worst_case(f)),
                amplification(f, all).to_string(),
            ]
        })
        .collect();
    let width: Vec<usize> = (0..head.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([head[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let c: Vec<String> = cells
            .iter()
            .zip(&width)
            .map(|(c, w)| format!("{c:w$}"))
            .collect();
        outln!("{}", c.join("  ").trim_end());
    };
    line(head.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
    // The rest of each function's effective policy, which the table has no column for.
    outln!("\nthe rest of each policy:");
    for f in all {
        outln!("  {}: {}", f.path, rest_of_policy(f));
    }
    outln!("\nwhere each setting came from (built-in defaults not shown):");
    for f in all {
        let s = &f.analysis.settings;
        let mut from: Vec<String> = Vec::new();
        let mut note = |k: &str, o: &Origin| {
            if !matches!(o, Origin::Builtin) {
                from.push(format!("{k}: {}", origin(o)));
            }
        };
        if let Some(m) = &f.analysis.method {
            note("method", &m.origin);
        }
        note("timeout", &s.timeout.origin);
        note("deadline", &s.deadline.origin);
        note("max_attempts", &s.max_attempts.origin);
        note("retry_on", &s.retry_on.origin);
        note("idempotency_key", &s.idempotency_key.origin);
        note("backoff.kind", &s.backoff.kind.origin);
        note("backoff.initial", &s.backoff.initial.origin);
        note("backoff.max", &s.backoff.max.origin);
        note("backoff.multiplier", &s.backoff.multiplier_milli.origin);
        note("backoff.jitter", &s.backoff.jitter.origin);
        note("max_retry_after", &s.max_retry_after.origin);
        note("idempotent", &s.idempotent.origin);
        note("budget", &s.budget.origin);
        note("breaker", &s.breaker.origin);
        note("bulkhead", &s.bulkhead.origin);
        note("rate_limit", &s.rate_limit.origin);
        note("concurrency_limit", &s.concurrency_limit.origin);
        note("hedge", &s.hedge.origin);
        if let Some(fb) = &s.fallback {
            note("fallback", &fb.origin);
        }
        if let Some(c) = &s.client {
            note("client", &c.origin);
        }
        if !from.is_empty() {
            outln!("  {} ({}:{}): {}", f.path, f.file, f.line, from.join("; "));
        }
    }
}

// --- Check -------------------------------------------------------------------------------------

/// The runtime's view of an analysed function, for checking an override file against it: the
/// policy the macro packs into the function, read back as the runtime reads it, without the
/// state it shares (budget, bulkhead), which an override file does not change. The breaker
/// stays: its `slow_call_duration` is checked against an overridden timeout, as the runtime
/// checks it.
fn compiled(f: &Function) -> Result<&'static Policy, String> {
    let packed: &'static str = Box::leak(f.analysis.packed().pack().into_boxed_str());
    let function: &'static str = Box::leak(f.path.clone().into_boxed_str());
    let p = resilience_runtime::__private::unpack_policy(function, packed)
        .map_err(|e| e.to_string())?;
    let policy = Policy {
        budget: None,
        bulkhead: None,
        // The wait for a permit is checked against an overridden deadline.
        rate_limit: p.rate_limit.map(|(_, r)| {
            (
                "",
                resilience_runtime::ratelimit::RateLimitSpec {
                    store: resilience_runtime::ratelimit::RateLimitStore::Local,
                    ..r
                },
            )
        }),
        // The latency and the wait are checked against an overridden timeout and deadline.
        concurrency: p.concurrency.map(|(_, c)| ("", c)),
        ..p
    };
    Ok(Box::leak(Box::new(policy)))
}

/// The `[functions."PATH"]` and `[policies.NAME]` sections of an override file that name no
/// function (no policy) of the crate: a typo, or another crate's. Only a warning: one override
/// file may serve every crate of a service.
fn unmatched_sections(
    text: &str,
    file: &Path,
    functions: &[(&'static str, &'static str, &'static Policy)],
) -> Vec<String> {
    let Ok(doc) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    let keys = |section: &str| -> Vec<String> {
        doc.get(section)
            .and_then(toml::Value::as_table)
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for f in keys("functions") {
        if functions.iter().any(|(path, _, _)| *path == f) {
            continue;
        }
        let name = f.rsplit("::").next().unwrap_or(&f);
        let like: Vec<&str> = functions
            .iter()
            .map(|(path, _, _)| *path)
            .filter(|path| path.rsplit("::").next() == Some(name))
            .collect();
        let hint = if like.is_empty() {
            String::new()
        } else {
            format!("; did you mean {}?", like.join(" or "))
        };
        out.push(format!(
            "{}: [functions.\"{f}\"] names no annotated function of this crate (another crate's, or a typo: it changes nothing here){hint}",
            file.display()
        ));
    }
    for p in keys("policies") {
        if !functions.iter().any(|(_, policy, _)| *policy == p) {
            out.push(format!(
                "{}: [policies.{p}] is the policy of no annotated function of this crate (another crate's, or a typo: it changes nothing here)",
                file.display()
            ));
        }
    }
    out
}

fn check(krate: &Crate, overrides: Option<(&Path, &str)>) -> ExitCode {
    let mut problems = krate.problems.clone();
    if let Some((path, text)) = overrides {
        let functions: Vec<(&'static str, &'static str, &'static Policy)> = krate
            .functions
            .iter()
            .filter_map(|f| match compiled(f) {
                Ok(p) => {
                    let policy: &'static str = if p.name.is_empty() {
                        p.function
                    } else {
                        p.name
                    };
                    Some((p.function, policy, p))
                }
                Err(e) => {
                    problems.push(format!("{}: {e}", f.path));
                    None
                }
            })
            .collect();
        match resilience_runtime::overrides::check(text, &path.display().to_string(), &functions) {
            Ok(changes) => {
                for c in changes {
                    outln!("{}: {} {} -> {}", c.function, c.setting, c.old, c.new);
                }
                for w in unmatched_sections(text, path, &functions) {
                    eprintln!("warning: {w}");
                }
            }
            Err(e) => problems.extend(e.problems),
        }
    }
    // Every annotated function found, those the rules refused included.
    let mut by_file: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &krate.found_in {
        *by_file.entry(f.as_str()).or_default() += 1;
    }
    for p in &problems {
        eprintln!("{p}");
    }
    outln!(
        "{} annotated function{} in {} file{}: {}",
        krate.found_in.len(),
        if krate.found_in.len() == 1 { "" } else { "s" },
        by_file.len(),
        if by_file.len() == 1 { "" } else { "s" },
        if problems.is_empty() {
            "every policy holds".to_owned()
        } else {
            format!(
                "{} problem{}",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            )
        }
    );
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
