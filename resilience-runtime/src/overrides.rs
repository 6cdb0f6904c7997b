//! Checked run-time overrides: an operator changes timeouts, deadlines, retries and backoff
//! without a rebuild, and the compiled safety rules still hold.
//!
//! Point the environment variable [`ENV`] (`RESILIENCE_OVERRIDES`) at a TOML file laid out as
//! `resilience.toml` is (`[defaults]`, `[policies.NAME]`), plus `[functions."PATH"]`
//! sections, holding only the settings that can change at run time. It is read when the first `#[resilient]` function is first
//! called (or before, when the process applies a file by hand or calls [`clear`] first: what
//! it applies then replaces the environment's file, not the other way round), and again whenever the process calls [`reload`] (from an admin endpoint, say) or,
//! after [`reload_on_sighup`], receives SIGHUP. [`apply_file`] and [`apply_str`] apply a file given by hand.
//!
//! ```toml
//! [defaults]                       # every annotated function
//! max_retry_after = "10s"
//!
//! [policies.payments]              # the functions of `policy = "payments"`
//! timeout = "20s"
//! deadline = "60s"
//!
//! [functions."shop::pg::Client::charge"]   # one function, by its full path
//! max_attempts = 2
//! ```
//!
//! A function's full path is the one `resilience list` prints
//! ([`resilience_spec::paths`]): its module, then for a method the last segment of its impl's
//! type (and trait) without generic arguments, then its name: `shop::pg::Client::charge`,
//! `shop::svc::<Svc as Api>::get`. A section naming no function applies to nothing.
//!
//! The settings that can change at run time: `timeout`, `deadline`, `max_attempts`,
//! `max_retry_after`, `retry_on` and `backoff` (`kind`, `initial`, `max`, `multiplier`,
//! `jitter`). The more specific section wins: the compiled policy < `[defaults]` <
//! `[policies.NAME]` < `[functions."PATH"]`. What a function sends (its method, its key) is a
//! compiled fact an override cannot change; so is a single attempt: the code generated for a
//! function built with `max_attempts = 1` runs its body once (the body may move its arguments).
//!
//! Every override is checked with the rules the macro applies at compile time
//! ([`resilience_spec::rules`]), against each function's compiled facts: an override that would
//! let a POST without a key be retried after it may have arrived, give an attempt more time
//! than the deadline, or no more time than its client's connect timeout, is refused, with
//! `file:line:col` and the rule's own message, and nothing of that file is applied: every
//! function keeps the policy it had. Each applied change is logged (function, setting, old →
//! new) and returned as a [`Change`].
//!
//! A function first called after a file was applied gets the file's settings then, checked the
//! same way; if they break a rule for it, it keeps its compiled policy and the refusal is logged.
//!
//! The hot path reads the current policy with one relaxed atomic load while no override is
//! active, and a lock-free load of the function's current policy while one is.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use resilience_spec::{Broken, rules};

use crate::policy::{BackoffKind, Jitter, KeySource, Policy, RetryOn};

/// The environment variable naming the override file.
pub const ENV: &str = "RESILIENCE_OVERRIDES";

/// An override file that was refused: nothing of it was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverrideError {
    /// Each problem, as `file:line:col: message`.
    pub problems: Vec<String>,
}

impl fmt::Display for OverrideError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "run-time overrides refused, the policies stay as they were:\n{}",
            self.problems.join("\n")
        )
    }
}

impl std::error::Error for OverrideError {}

/// One setting of one function that an override changed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Change {
    /// The function's full path.
    pub function: &'static str,
    /// The setting, as written in the file (`timeout`, `backoff.initial`, …).
    pub setting: &'static str,
    /// Its value before.
    pub old: String,
    /// Its value now.
    pub new: String,
}

/// A value with the place it was written.
#[derive(Debug, Clone, Copy)]
struct At<T> {
    value: T,
    line: usize,
    col: usize,
}

/// The settings one section overrides.
#[derive(Debug, Clone, Default)]
struct Patch {
    timeout: Option<At<Duration>>,
    deadline: Option<At<Duration>>,
    max_attempts: Option<At<u32>>,
    max_retry_after: Option<At<Duration>>,
    retry_on: Option<At<RetryOn>>,
    kind: Option<At<BackoffKind>>,
    initial: Option<At<Duration>>,
    max: Option<At<Duration>>,
    multiplier_milli: Option<At<u32>>,
    jitter: Option<At<Jitter>>,
}

impl Patch {
    /// Overrides nothing.
    fn is_empty(&self) -> bool {
        let Patch {
            timeout,
            deadline,
            max_attempts,
            max_retry_after,
            retry_on,
            kind,
            initial,
            max,
            multiplier_milli,
            jitter,
        } = self;
        timeout.is_none()
            && deadline.is_none()
            && max_attempts.is_none()
            && max_retry_after.is_none()
            && retry_on.is_none()
            && kind.is_none()
            && initial.is_none()
            && max.is_none()
            && multiplier_milli.is_none()
            && jitter.is_none()
    }
}

impl Doc {
    /// Overrides nothing, for any function (an emptied file, the runbook's "incident over").
    fn is_empty(&self) -> bool {
        self.defaults.is_empty()
            && self.policies.values().all(Patch::is_empty)
            && self.functions.values().all(Patch::is_empty)
    }
}

/// A parsed override file.
#[derive(Debug, Default)]
struct Doc {
    name: String,
    defaults: Patch,
    policies: BTreeMap<String, Patch>,
    functions: BTreeMap<String, Patch>,
}

/// One annotated function, as the overrides see it.
struct Known {
    function: &'static str,
    policy: &'static str,
    compiled: &'static Policy,
    current: &'static ArcSwapOption<&'static Policy>,
    /// Every overridden policy of this function made so far. A call in flight holds its
    /// policy as `&'static`, so none is ever freed; an override equal to one of these takes
    /// it again, so that a file applied over and over (a reload on a timer, on every SIGHUP)
    /// keeps as many as it has distinct settings, not one more per reload.
    made: Vec<&'static Policy>,
    /// The rules the file in force would break for this function, found at its first call
    /// (it keeps its compiled policy): empty when the file applies to it, or none is in force.
    refused: Vec<String>,
}

impl Known {
    /// `p`, kept for the life of the process: the one made before if it is the same.
    fn keep(&mut self, p: Policy) -> &'static Policy {
        if let Some(same) = self.made.iter().find(|m| same_policy(m, &p)) {
            return same;
        }
        let p: &'static Policy = Box::leak(Box::new(p));
        self.made.push(p);
        p
    }
}

/// Whether two policies of the same function are the same in every setting (their `locate`
/// is the function's own in both).
fn same_policy(a: &Policy, b: &Policy) -> bool {
    let Policy {
        function,
        name,
        method,
        timeout,
        deadline,
        max_attempts,
        backoff,
        retry_on,
        idempotency_key,
        idempotent,
        max_retry_after,
        budget,
        breaker,
        bulkhead,
        hedge,
        rate_limit,
        concurrency,
        unseen,
        sends_seen,
        connect_timeout,
        locate: _,
    } = a;
    *function == b.function
        && *name == b.name
        && *method == b.method
        && *timeout == b.timeout
        && *deadline == b.deadline
        && *max_attempts == b.max_attempts
        && *backoff == b.backoff
        && *retry_on == b.retry_on
        && *idempotency_key == b.idempotency_key
        && *idempotent == b.idempotent
        && *max_retry_after == b.max_retry_after
        && *budget == b.budget
        && *breaker == b.breaker
        && *bulkhead == b.bulkhead
        && *hedge == b.hedge
        && *rate_limit == b.rate_limit
        && *concurrency == b.concurrency
        && *unseen == b.unseen
        && *sends_seen == b.sends_seen
        && *connect_timeout == b.connect_timeout
}

static ACTIVE: AtomicBool = AtomicBool::new(false);
static KNOWN: Mutex<Vec<Known>> = Mutex::new(Vec::new());
static DOC: Mutex<Option<Arc<Doc>>> = Mutex::new(None);
static FROM_ENV: std::sync::Once = std::sync::Once::new();
/// The last file refused (see [`last_refusal`]); none once one is applied or cleared.
static LAST_REFUSAL: Mutex<Option<OverrideError>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The policy a call of this function runs under now.
#[inline]
pub(crate) fn current(
    compiled: &'static Policy,
    slot: &'static ArcSwapOption<&'static Policy>,
) -> &'static Policy {
    if !ACTIVE.load(Ordering::Relaxed) {
        return compiled;
    }
    match &*slot.load() {
        Some(p) => p,
        None => compiled,
    }
}

/// Called once per function, on its first call: makes it known to later overrides, reads the
/// environment's file if no function did yet, and applies the current file to it.
pub(crate) fn register(
    function: &'static str,
    policy: &'static str,
    compiled: &'static Policy,
    current: &'static ArcSwapOption<&'static Policy>,
) {
    read_env_once();
    let mut known = Known {
        function,
        policy,
        compiled,
        current,
        made: Vec::new(),
        refused: Vec::new(),
    };
    // Under the list's lock, which a reload holds from its plan until its file is in place:
    // a reload racing this first call either sees this function or is the file read here
    // (read before it, the old file would be applied to it after the new one was in place).
    let mut all = lock(&KNOWN);
    let doc = lock(&DOC).clone();
    if let Some(doc) = doc {
        match plan(&doc, &known) {
            Ok(Some((p, changes))) => {
                let p = known.keep(p);
                known.current.store(Some(Arc::new(p)));
                log(&changes);
            }
            Ok(None) => {}
            Err(problems) => {
                tracing::error!(
                    function,
                    problems = %problems.join("; "),
                    "run-time overrides refused for this function: it keeps its compiled policy"
                );
                known.refused = problems;
            }
        }
    }
    all.push(known);
}

/// Reads the environment's file, once: at the first call of an annotated function, or
/// before the first file applied by hand (or [`clear`]), whichever comes first, so that what
/// the service applies by hand before its first call replaces that file and is not replaced by
/// it.
fn read_env_once() {
    FROM_ENV.call_once(|| {
        if env_file().is_some()
            && let Err(e) = reload_now()
        {
            tracing::error!(error = %e, "{ENV}: overrides not applied");
        }
    });
}

/// Reads the file [`ENV`] names and applies it; with the variable unset (or empty), removes
/// every override.
pub fn reload() -> Result<Vec<Change>, OverrideError> {
    // Read now: not again at the first call.
    FROM_ENV.call_once(|| {});
    reload_now()
}

/// The file [`ENV`] names: none when it is unset, or set to nothing (a container template's
/// variable given no value), which is not a file named "".
fn env_file() -> Option<std::ffi::OsString> {
    std::env::var_os(ENV).filter(|path| !path.is_empty())
}

fn reload_now() -> Result<Vec<Change>, OverrideError> {
    match env_file() {
        Some(path) => apply_file_now(path.as_ref()),
        None => Ok(clear_now()),
    }
}

/// Reloads the overrides (as [`reload`] does) every time the process receives SIGHUP, from a
/// task on the current tokio runtime; each outcome is logged. Call it once at start-up.
///
/// With [`ENV`] unset when the signal comes, there is no file to reload: the overrides in
/// force (those applied by hand included) stay, and a warning says so; a SIGHUP sent for
/// another reason (a log rotation's) does not take back an incident's settings. A service
/// that applies its own file reloads it with [`reload_file_on_sighup`].
///
/// # Errors
///
/// When the signal handler cannot be installed, or it is called outside a tokio runtime (the
/// runtime must have IO enabled, `enable_io` or `enable_all`: tokio panics otherwise).
#[cfg(unix)]
pub fn reload_on_sighup() -> std::io::Result<tokio::task::JoinHandle<()>> {
    on_sighup(None)
}

/// Applies the file at `path` (as [`apply_file`] does) every time the process receives
/// SIGHUP, for a service that applies its own override file rather than the one [`ENV`]
/// names; as [`reload_on_sighup`] otherwise.
///
/// # Errors
///
/// As [`reload_on_sighup`].
#[cfg(unix)]
pub fn reload_file_on_sighup(
    path: impl Into<std::path::PathBuf>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    on_sighup(Some(path.into()))
}

#[cfg(unix)]
fn on_sighup(file: Option<std::path::PathBuf>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(std::io::Error::other(
            "reloading the overrides on SIGHUP needs a tokio runtime (with IO enabled): call it inside one",
        ));
    }
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let outcome = match &file {
                Some(path) => apply_file(path),
                None if env_file().is_none() => {
                    tracing::warn!(
                        "SIGHUP: {ENV} is not set, no file to reload: the overrides in force stay (a service applying its own file reloads it with reload_file_on_sighup)"
                    );
                    continue;
                }
                None => reload(),
            };
            match outcome {
                Ok(changes) => tracing::info!(
                    changes = changes.len(),
                    "SIGHUP: run-time overrides reloaded"
                ),
                Err(e) => tracing::error!(error = %e, "SIGHUP: run-time overrides refused"),
            }
        }
    }))
}

/// Reads an override file and applies it, or refuses it whole.
pub fn apply_file(path: impl AsRef<Path>) -> Result<Vec<Change>, OverrideError> {
    read_env_once();
    apply_file_now(path.as_ref())
}

/// The last override file refused whole (a syntax error, an unreadable file, a rule it would
/// break), whoever read it: the environment's at the first call (where only an error log
/// said so), a `reload()` on SIGHUP, a file applied by hand; none once a file is applied or
/// the overrides cleared since. For an operator's endpoint, beside [`unmatched`] and
/// [`refused`]: a file refused leaves what was in force before it (nothing, at start-up).
pub fn last_refusal() -> Option<OverrideError> {
    read_env_once();
    lock(&LAST_REFUSAL).clone()
}

/// Keeps `outcome`'s refusal for [`last_refusal`], or clears it when the file applied.
fn noted<T>(outcome: Result<T, OverrideError>) -> Result<T, OverrideError> {
    *lock(&LAST_REFUSAL) = outcome.as_ref().err().cloned();
    outcome
}

fn apply_file_now(path: &Path) -> Result<Vec<Change>, OverrideError> {
    // One file read and applied at a time: two reloads racing a rewrite of the file (a
    // SIGHUP, an operator's endpoint) apply what they read in the order they read it, so the
    // later read (the newer contents) is the one left in force.
    static READING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = lock(&READING);
    let name = path.display().to_string();
    let text = noted(std::fs::read_to_string(path).map_err(|e| OverrideError {
        problems: vec![format!("{name}: cannot read: {e}")],
    }))?;
    apply_str_now(&text, &name)
}

/// Applies overrides given as TOML text; `name` stands for the file in messages.
pub fn apply_str(text: &str, name: &str) -> Result<Vec<Change>, OverrideError> {
    read_env_once();
    apply_str_now(text, name)
}

fn apply_str_now(text: &str, name: &str) -> Result<Vec<Change>, OverrideError> {
    let doc = Arc::new(noted(
        parse(text, name).map_err(|problems| OverrideError { problems }),
    )?);
    let mut known = lock(&KNOWN);
    let planned = noted(plan_all(&doc, known.iter()))?;
    let mut all = Vec::new();
    for (k, p) in known.iter_mut().zip(planned) {
        k.refused.clear();
        match p {
            // What changes is told against the policy in force, an earlier file's override
            // included (a setting that file changed and this one leaves out goes back), not
            // against the compiled one; a file applied again changes nothing.
            Some((policy, _)) => {
                let before: &Policy = k.current.load().as_ref().map_or(k.compiled, |p| **p);
                all.append(&mut diff(k.function, before, &policy));
                let policy = k.keep(policy);
                k.current.store(Some(Arc::new(policy)));
            }
            None => {
                let had = k.current.swap(None);
                if let Some(had) = had {
                    all.append(&mut diff(k.function, &had, k.compiled));
                }
            }
        }
    }
    // A file that overrides nothing leaves no override in place (every function's was just
    // taken away): the hot path goes back to its one relaxed load.
    let active = !doc.is_empty();
    let naming_nothing = unmatched_in(&doc, &known);
    if !naming_nothing.is_empty() {
        tracing::info!(
            file = %doc.name,
            sections = ?naming_nothing,
            "override sections that name no function called so far: they apply to a function of that path (or policy) when it is first called, and to nothing if misspelled"
        );
    }
    *lock(&DOC) = active.then_some(doc);
    ACTIVE.store(active, Ordering::Release);
    log(&all);
    Ok(all)
}

/// The sections of the override file in force that name no function (`[functions."…"]`) or
/// policy (`[policies.…]`) called so far, as written in the file: a misspelled path or name
/// applies to nothing, silently. The runtime learns of a function at its first call, so a
/// section for one not called yet is listed until it is; `resilience check --overrides`
/// checks a file against every function of the crate. For an operator's endpoint, after
/// [`apply_file`] or [`reload`].
pub fn unmatched() -> Vec<String> {
    read_env_once();
    let known = lock(&KNOWN);
    let doc = lock(&DOC).clone();
    doc.map_or_else(Vec::new, |doc| unmatched_in(&doc, &known))
}

/// The functions the override file in force does not apply to because it would break a rule
/// for them, each with the rules (as `file:line:col: …`): found when a function is first
/// called after the file was applied (checked then against it), it keeps its compiled policy
/// until a file that suits it is applied (the same file is then refused whole). For an
/// operator's endpoint, beside [`unmatched`].
pub fn refused() -> Vec<Refused> {
    read_env_once();
    lock(&KNOWN)
        .iter()
        .filter(|k| !k.refused.is_empty())
        .map(|k| Refused {
            function: k.function,
            problems: k.refused.clone(),
        })
        .collect()
}

/// A function the override file in force does not apply to (see [`refused`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Refused {
    /// The function's full path.
    pub function: &'static str,
    /// The rules the file would break for it, located in the file.
    pub problems: Vec<String>,
}

fn unmatched_in(doc: &Doc, known: &[Known]) -> Vec<String> {
    let functions = doc
        .functions
        .keys()
        .filter(|f| !known.iter().any(|k| k.function == f.as_str()))
        .map(|f| format!("functions.\"{f}\""));
    let policies = doc
        .policies
        .keys()
        .filter(|p| !known.iter().any(|k| k.policy == p.as_str()))
        .map(|p| format!("policies.{p}"));
    functions.chain(policies).collect()
}

/// Checks overrides given as TOML text against functions described by hand (path, policy
/// name, compiled policy) without applying anything: what `resilience check --overrides` runs.
/// `Ok` holds the changes the file would make.
pub fn check(
    text: &str,
    name: &str,
    functions: &[(&'static str, &'static str, &'static Policy)],
) -> Result<Vec<Change>, OverrideError> {
    let doc = parse(text, name).map_err(|problems| OverrideError { problems })?;
    static UNUSED: ArcSwapOption<&'static Policy> = ArcSwapOption::const_empty();
    let known: Vec<Known> = functions
        .iter()
        .map(|(function, policy, compiled)| Known {
            function,
            policy,
            compiled,
            current: &UNUSED,
            made: Vec::new(),
            refused: Vec::new(),
        })
        .collect();
    Ok(plan_all(&doc, known.iter())?
        .into_iter()
        .flatten()
        .flat_map(|(_, changes)| changes)
        .collect())
}

/// [`plan`] for every function: each one's plan, or every rule broken, sorted, none repeated.
#[allow(clippy::type_complexity)]
fn plan_all<'a>(
    doc: &Doc,
    known: impl Iterator<Item = &'a Known>,
) -> Result<Vec<Option<(Policy, Vec<Change>)>>, OverrideError> {
    let mut planned = Vec::new();
    let mut problems = Vec::new();
    for k in known {
        match plan(doc, k) {
            Ok(p) => planned.push(p),
            Err(mut p) => problems.append(&mut p),
        }
    }
    if problems.is_empty() {
        Ok(planned)
    } else {
        problems.sort();
        problems.dedup();
        Err(OverrideError { problems })
    }
}

/// Whether an override file is in place (one that overrides something): while none is, a
/// call pays one relaxed atomic load for the overrides, nothing more.
///
/// Reads the environment's file first if no call has yet (as [`unmatched`] and [`refused`]
/// do): an admin endpoint asked before the first annotated call sees the file [`ENV`] names.
pub fn active() -> bool {
    read_env_once();
    ACTIVE.load(Ordering::Acquire)
}

/// Removes every override: each function runs under its compiled policy again.
pub fn clear() -> Vec<Change> {
    read_env_once();
    clear_now()
}

fn clear_now() -> Vec<Change> {
    *lock(&LAST_REFUSAL) = None;
    let mut known = lock(&KNOWN);
    let mut all = Vec::new();
    for k in known.iter_mut() {
        k.refused.clear();
        if let Some(had) = k.current.swap(None) {
            all.append(&mut diff(k.function, &had, k.compiled));
        }
    }
    *lock(&DOC) = None;
    ACTIVE.store(false, Ordering::Release);
    log(&all);
    all
}

fn log(changes: &[Change]) {
    for c in changes {
        tracing::warn!(
            function = c.function,
            setting = c.setting,
            old = %c.old,
            new = %c.new,
            "run-time override applied"
        );
    }
}

/// The policy `k` would run under with `doc`, and what changes; `None`: no section applies.
/// `Err`: the rules it would break, located in the file.
#[allow(clippy::type_complexity)]
fn plan(doc: &Doc, k: &Known) -> Result<Option<(Policy, Vec<Change>)>, Vec<String>> {
    let sections: Vec<&Patch> = [
        Some(&doc.defaults),
        doc.policies.get(k.policy),
        doc.functions.get(k.function),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut p = *k.compiled;
    // Where each setting came from, for the messages.
    let mut at: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
    macro_rules! take {
        ($field:ident, $name:literal, $set:expr) => {
            for s in &sections {
                if let Some(v) = s.$field {
                    #[allow(clippy::redundant_closure_call)]
                    ($set)(&mut p, v.value);
                    at.insert($name, (v.line, v.col));
                }
            }
        };
    }
    take!(timeout, "timeout", |p: &mut Policy, v| p.timeout = v);
    take!(deadline, "deadline", |p: &mut Policy, v| p.deadline = v);
    take!(max_attempts, "max_attempts", |p: &mut Policy, v| p
        .max_attempts =
        v);
    take!(max_retry_after, "max_retry_after", |p: &mut Policy, v| p
        .max_retry_after =
        v);
    take!(retry_on, "retry_on", |p: &mut Policy, v| p.retry_on = v);
    take!(kind, "backoff.kind", |p: &mut Policy, v| p.backoff.kind = v);
    take!(initial, "backoff.initial", |p: &mut Policy, v| p
        .backoff
        .initial =
        v);
    take!(max, "backoff.max", |p: &mut Policy, v| p.backoff.max = v);
    take!(
        multiplier_milli,
        "backoff.multiplier",
        |p: &mut Policy, v| p.backoff.multiplier_milli = v
    );
    take!(jitter, "backoff.jitter", |p: &mut Policy, v| p
        .backoff
        .jitter =
        v);
    if at.is_empty() {
        return Ok(None);
    }
    // The rules, against the compiled facts (method, key, idempotent, one attempt).
    let mut problems = Vec::new();
    let mut check = |r: Result<(), Broken>, blame: &[&'static str]| {
        if let Err(b) = r {
            // The settings blamed, else the first of this function's the file gives (a rule
            // broken by the compiled facts and a setting not listed): never `1:1` for nothing.
            let (line, col) = blame
                .iter()
                .find_map(|s| at.get(s).copied())
                .or_else(|| at.values().min().copied())
                .unwrap_or((1, 1));
            problems.push(format!(
                "{}:{line}:{col}: {} ({}): {}",
                doc.name,
                k.function,
                k.compiled.method,
                b.to_string().replace('\n', "\n    ")
            ));
        }
    };
    // What no function may take (`max_attempts` out of range, a zero `timeout` or
    // `deadline`, a multiplier out of range, a permanent status in `retry_on`) was refused as
    // the file was read (`Parser::patch`); the compiled values passed the same rules.
    check(
        rules::attempts_within_build(k.compiled.max_attempts, p.max_attempts),
        &["max_attempts"],
    );
    check(
        rules::timeout_within_deadline(p.timeout, p.deadline, p.max_attempts),
        &["timeout", "deadline"],
    );
    if let Some(c) = p.connect_timeout {
        check(rules::connect_within_timeout(c, p.timeout), &["timeout"]);
    }
    // A constant backoff waits `initial` every time: its `max` is never used.
    if p.backoff.kind != BackoffKind::Constant {
        check(
            rules::backoff_order(p.backoff.initial, p.backoff.max),
            // A kind the file made exponential over a compiled constant's `initial` above
            // its `max`: the kind is what broke it.
            &["backoff.initial", "backoff.max", "backoff.kind"],
        );
    }
    check(
        rules::backoff_within_deadline(
            p.backoff.shortest_first(),
            p.max_attempts,
            p.deadline,
            None,
        ),
        &[
            "backoff.initial",
            "backoff.jitter",
            "backoff.kind",
            "deadline",
            "max_attempts",
        ],
    );
    // Generated code packs a method neither declared nor inferred as `OTHER`.
    check(
        rules::method_known(
            p.method != crate::Method::Other,
            p.max_attempts,
            p.retry_on.ambiguous(),
        ),
        &["max_attempts", "retry_on"],
    );
    check(
        rules::safe_retry(
            p.method,
            !matches!(p.idempotency_key, KeySource::None),
            p.idempotent,
            p.max_attempts,
            p.retry_on.ambiguous(),
        ),
        &["max_attempts", "retry_on"],
    );
    if let Some((_, b)) = &p.breaker {
        check(
            rules::slow_call_within_timeout(b.slow_call_duration, p.timeout),
            &["timeout"],
        );
    }
    if let Some(h) = &p.hedge {
        check(
            rules::hedge_within_timeout(h.delay, p.timeout),
            &["timeout"],
        );
        check(
            rules::hedge_within_deadline(h.delay, h.max, p.deadline),
            &["deadline"],
        );
    }
    if let Some((_, r)) = &p.rate_limit {
        check(
            rules::rate_limit_wait_within_deadline(r.max_wait, p.deadline, None),
            &["deadline"],
        );
    }
    if let Some((_, c)) = &p.concurrency {
        check(
            rules::concurrency_latency_within_timeout(c.latency, p.timeout, None),
            &["timeout"],
        );
        check(
            rules::concurrency_wait_within_deadline(c.max_wait, p.deadline, None),
            &["deadline"],
        );
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let changes = diff(k.function, k.compiled, &p);
    Ok(Some((p, changes)))
}

fn diff(function: &'static str, old: &Policy, new: &Policy) -> Vec<Change> {
    let mut out = Vec::new();
    let mut cmp = |setting: &'static str, a: String, b: String| {
        if a != b {
            out.push(Change {
                function,
                setting,
                old: a,
                new: b,
            });
        }
    };
    let d = |d: Duration| resilience_spec::fmt_duration(d);
    cmp("timeout", d(old.timeout), d(new.timeout));
    cmp("deadline", d(old.deadline), d(new.deadline));
    cmp(
        "max_attempts",
        old.max_attempts.to_string(),
        new.max_attempts.to_string(),
    );
    cmp(
        "max_retry_after",
        d(old.max_retry_after),
        d(new.max_retry_after),
    );
    cmp(
        "retry_on",
        render_retry_on(&old.retry_on),
        render_retry_on(&new.retry_on),
    );
    cmp(
        "backoff.kind",
        format!("{:?}", old.backoff.kind).to_lowercase(),
        format!("{:?}", new.backoff.kind).to_lowercase(),
    );
    cmp(
        "backoff.initial",
        d(old.backoff.initial),
        d(new.backoff.initial),
    );
    cmp("backoff.max", d(old.backoff.max), d(new.backoff.max));
    cmp(
        "backoff.multiplier",
        (f64::from(old.backoff.multiplier_milli) / 1000.0).to_string(),
        (f64::from(new.backoff.multiplier_milli) / 1000.0).to_string(),
    );
    cmp(
        "backoff.jitter",
        format!("{:?}", old.backoff.jitter).to_lowercase(),
        format!("{:?}", new.backoff.jitter).to_lowercase(),
    );
    out
}

fn render_retry_on(r: &RetryOn) -> String {
    let mut v: Vec<String> = Vec::new();
    for (on, name) in [
        (r.connect, "connect"),
        (r.reset, "reset"),
        (r.timeout, "timeout"),
    ] {
        if on {
            v.push(name.into());
        }
    }
    v.extend(r.statuses.iter().map(u16::to_string));
    format!("[{}]", v.join(", "))
}

// --- Parsing ------------------------------------------------------------------------------------

type DeValue<'a> = toml::Spanned<toml::de::DeValue<'a>>;

struct Parser<'t> {
    text: &'t str,
    name: &'t str,
    problems: Vec<String>,
}

impl Parser<'_> {
    fn pos(&self, offset: usize) -> (usize, usize) {
        resilience_spec::line_col(self.text, offset)
    }

    fn problem(&mut self, offset: usize, msg: impl fmt::Display) {
        let (line, col) = self.pos(offset);
        self.problems
            .push(format!("{}:{line}:{col}: {msg}", self.name));
    }

    fn at<T>(&self, v: &DeValue<'_>, value: T) -> At<T> {
        let (line, col) = self.pos(v.span().start);
        At { value, line, col }
    }

    fn duration(&mut self, key: &str, v: &DeValue<'_>) -> Option<At<Duration>> {
        match v.get_ref() {
            toml::de::DeValue::String(s) => match resilience_spec::parse_duration(s) {
                Ok(d) => Some(self.at(v, d)),
                Err(m) => {
                    self.problem(v.span().start, m);
                    None
                }
            },
            _ => {
                self.problem(
                    v.span().start,
                    format!("`{key}` takes a duration like \"250ms\", \"1.5s\" or \"1m\""),
                );
                None
            }
        }
    }

    fn whole(&mut self, key: &str, v: &DeValue<'_>) -> Option<u64> {
        match v.get_ref() {
            toml::de::DeValue::Integer(i) => match toml_uint(i) {
                Some(n) => Some(n),
                None => {
                    self.problem(
                        v.span().start,
                        format!("`{key}` takes a non-negative whole number"),
                    );
                    None
                }
            },
            _ => {
                self.problem(v.span().start, format!("`{key}` takes a whole number"));
                None
            }
        }
    }

    fn patch(&mut self, t: &toml::de::DeTable<'_>, section: &str) -> Patch {
        let mut p = Patch::default();
        for (key, v) in t {
            let k: &str = key.get_ref();
            let start = key.span().start;
            match k {
                // What no function may take is refused as the file is read, whether or not a
                // function it applies to has been called yet (the rules against each
                // function's compiled facts follow, in `plan`).
                "timeout" | "deadline" => {
                    let d = self.duration(k, v);
                    if let Some(d) = &d
                        && let Err(b) = rules::timeout_nonzero(k, d.value)
                    {
                        self.problem(v.span().start, b);
                    }
                    if k == "timeout" {
                        p.timeout = d;
                    } else {
                        p.deadline = d;
                    }
                }
                "max_retry_after" => p.max_retry_after = self.duration(k, v),
                "max_attempts" => {
                    // Refused as written (not cut down to `u32::MAX`).
                    p.max_attempts = match self.whole(k, v) {
                        Some(n) => match rules::max_attempts(n) {
                            Ok(()) => u32::try_from(n).ok().map(|n| self.at(v, n)),
                            Err(b) => {
                                self.problem(v.span().start, b);
                                None
                            }
                        },
                        None => None,
                    };
                }
                "retry_on" => p.retry_on = self.retry_on(v),
                "backoff" => match v.get_ref() {
                    toml::de::DeValue::Table(b) => self.backoff(b, &mut p),
                    // The shorthand resilience.toml takes: `backoff = "constant"` is its kind.
                    toml::de::DeValue::String(s) if &**s == "constant" => {
                        p.kind = Some(self.at(v, BackoffKind::Constant));
                    }
                    toml::de::DeValue::String(s) if &**s == "exponential" => {
                        p.kind = Some(self.at(v, BackoffKind::Exponential));
                    }
                    _ => self.problem(v.span().start, "`backoff` takes a table: { initial = \"100ms\", max = \"2s\" }, or \"constant\" or \"exponential\""),
                },
                "method" | "idempotency_key" | "idempotent" | "budget" | "breaker" | "bulkhead"
                | "rate_limit" | "concurrency_limit" | "hedge" | "fallback" | "fallback_on" | "client"
                | "policy" => self.problem(
                    start,
                    format!("`{k}` cannot change at run time (in [{section}]): it is a compiled fact of the function; change it in the code or resilience.toml and rebuild"),
                ),
                other => self.problem(
                    start,
                    format!("unknown key `{other}` in [{section}]; run-time overrides take timeout, deadline, max_attempts, max_retry_after, retry_on and backoff"),
                ),
            }
        }
        p
    }

    fn backoff(&mut self, b: &toml::de::DeTable<'_>, p: &mut Patch) {
        for (key, v) in b {
            let k: &str = key.get_ref();
            match k {
                "initial" => p.initial = self.duration(k, v),
                "max" => p.max = self.duration(k, v),
                "multiplier" => {
                    let x = match v.get_ref() {
                        toml::de::DeValue::Integer(i) => toml_uint(i).map(|n| n as f64),
                        toml::de::DeValue::Float(f) => f.as_str().replace('_', "").parse::<f64>().ok(),
                        _ => None,
                    };
                    // Checked as written, before it is rounded to thousandths.
                    match x.filter(|x| x.is_finite()).map(|x| (x, rules::backoff_multiplier(x))) {
                        Some((x, Ok(()))) => p.multiplier_milli = Some(self.at(v, (x * 1000.0).round() as u32)),
                        Some((_, Err(b))) => self.problem(v.span().start, b),
                        None => self.problem(v.span().start, "`multiplier` takes a number, such as 2"),
                    }
                }
                "kind" | "jitter" => {
                    let text = match v.get_ref() {
                        toml::de::DeValue::String(s) => s.to_string(),
                        _ => String::new(),
                    };
                    match (k, text.as_str()) {
                        ("kind", "exponential") => p.kind = Some(self.at(v, BackoffKind::Exponential)),
                        ("kind", "constant") => p.kind = Some(self.at(v, BackoffKind::Constant)),
                        ("jitter", "full") => p.jitter = Some(self.at(v, Jitter::Full)),
                        ("jitter", "equal") => p.jitter = Some(self.at(v, Jitter::Equal)),
                        ("jitter", "decorrelated") => p.jitter = Some(self.at(v, Jitter::Decorrelated)),
                        ("jitter", "none") => p.jitter = Some(self.at(v, Jitter::None)),
                        ("kind", _) => self.problem(v.span().start, "`kind` is \"exponential\" or \"constant\""),
                        _ => self.problem(v.span().start, "`jitter` is \"full\", \"equal\", \"decorrelated\" or \"none\""),
                    }
                }
                other => self.problem(key.span().start, format!("unknown backoff key `{other}`; it takes kind, initial, max, multiplier and jitter")),
            }
        }
    }

    fn retry_on(&mut self, v: &DeValue<'_>) -> Option<At<RetryOn>> {
        let toml::de::DeValue::Array(items) = v.get_ref() else {
            self.problem(
                v.span().start,
                "`retry_on` takes a list: [\"connect\", \"reset\", 503]",
            );
            return None;
        };
        let mut r = RetryOn::NONE;
        let mut statuses = Vec::new();
        for item in items {
            match item.get_ref() {
                toml::de::DeValue::String(s) => match &**s {
                    "connect" => r.connect = true,
                    "reset" => r.reset = true,
                    "timeout" => r.timeout = true,
                    other => self.problem(
                        item.span().start,
                        format!(
                            "`{other}` is not a failure class: connect, reset, timeout, or a status"
                        ),
                    ),
                },
                toml::de::DeValue::Integer(i) => match toml_uint(i).map(u16::try_from) {
                    Some(Ok(code)) => match rules::retryable_status(code) {
                        Ok(()) => statuses.push(code),
                        Err(b) => self.problem(item.span().start, b),
                    },
                    _ => self.problem(item.span().start, "not an HTTP status"),
                },
                _ => self.problem(item.span().start, "`retry_on` lists classes and statuses"),
            }
        }
        // Kept for the life of the process, like the compiled lists: one per distinct list.
        r.statuses = keep_statuses(statuses);
        Some(self.at(v, r))
    }
}

/// A TOML integer as written, in its base, as the policy file's reader takes it.
fn toml_uint(i: &toml::de::DeInteger<'_>) -> Option<u64> {
    resilience_spec::toml_uint(i.as_str(), i.radix())
}

/// `statuses` as a list kept for the life of the process (a policy in force may point at it):
/// the same list made before, if any, so that parsing a file again keeps nothing more.
fn keep_statuses(statuses: Vec<u16>) -> &'static [u16] {
    static KEPT: Mutex<Vec<&'static [u16]>> = Mutex::new(Vec::new());
    let mut kept = lock(&KEPT);
    if let Some(same) = kept.iter().find(|k| ***k == *statuses) {
        return same;
    }
    let list: &'static [u16] = Box::leak(statuses.into_boxed_slice());
    kept.push(list);
    list
}

fn parse(text: &str, name: &str) -> Result<Doc, Vec<String>> {
    let mut ps = Parser {
        text,
        name,
        problems: Vec::new(),
    };
    let root = match toml::de::DeTable::parse(text) {
        Ok(t) => t,
        Err(e) => {
            let offset = e.span().map_or(0, |s| s.start);
            ps.problem(offset, e.message().trim());
            return Err(ps.problems);
        }
    };
    let mut doc = Doc {
        name: name.to_owned(),
        ..Doc::default()
    };
    for (key, v) in root.get_ref() {
        let k: &str = key.get_ref();
        let toml::de::DeValue::Table(t) = v.get_ref() else {
            // A setting written at the top (`timeout = "5s"`) belongs in a section.
            ps.problem(
                key.span().start,
                match k {
                    "defaults" | "policies" | "functions" => format!("`{k}` must be a section: [{k}]"),
                    _ => format!(
                        "`{k}` outside a section: settings go under [defaults], [policies.NAME] or [functions.\"PATH\"]"
                    ),
                },
            );
            continue;
        };
        match k {
            "defaults" => doc.defaults = ps.patch(t, "defaults"),
            "policies" | "functions" => {
                for (sub, sv) in t {
                    let label = format!("{k}.{}", sub.get_ref());
                    match sv.get_ref() {
                        toml::de::DeValue::Table(st) => {
                            let p = ps.patch(st, &label);
                            let map = if k == "policies" {
                                &mut doc.policies
                            } else {
                                &mut doc.functions
                            };
                            map.insert(sub.get_ref().to_string(), p);
                        }
                        _ => ps.problem(sub.span().start, format!("[{label}] must be a table")),
                    }
                }
            }
            "breakers" | "budgets" | "bulkheads" | "rate_limits" | "concurrency_limits"
            | "clients" => ps.problem(
                key.span().start,
                format!("[{k}] cannot change at run time: their state is sized at start-up; use resilience_runtime::breakers to force a breaker open or closed"),
            ),
            other => ps.problem(
                key.span().start,
                format!("unknown section [{other}]; run-time overrides take [defaults], [policies.NAME] and [functions.\"PATH\"]"),
            ),
        }
    }
    if ps.problems.is_empty() {
        Ok(doc)
    } else {
        Err(ps.problems)
    }
}
