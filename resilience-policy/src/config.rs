//! `resilience.toml`: found beside the crate's `Cargo.toml` (or where `config = "…"` or
//! `[package.metadata.resilience] config = "…"` points), parsed once per compilation and kept
//! with the line and column of every value.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::SystemTime;

use crate::value::{Located, Origin, Value, did_you_mean};

pub const FILE_NAME: &str = "resilience.toml";
pub const SECTIONS: &[&str] = &[
    "defaults",
    "policies",
    "breakers",
    "budgets",
    "bulkheads",
    "rate_limits",
    "concurrency_limits",
    "clients",
];

/// A `[section.NAME]` table, with where it starts.
#[derive(Debug, Clone)]
pub struct Table {
    pub entries: Vec<(String, Located)>,
    /// Where the table's header is.
    pub origin: Origin,
}

#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Absolute path, for `include_str!`.
    pub path: PathBuf,
    /// The path as written in messages.
    pub display: String,
    pub defaults: Option<Table>,
    pub policies: BTreeMap<String, Table>,
    pub breakers: BTreeMap<String, Table>,
    pub budgets: BTreeMap<String, Table>,
    pub bulkheads: BTreeMap<String, Table>,
    pub rate_limits: BTreeMap<String, Table>,
    pub concurrency_limits: BTreeMap<String, Table>,
    pub clients: BTreeMap<String, Table>,
    /// Problems with the file as a whole, each starting with `file:line:col:`.
    pub errors: Vec<String>,
    /// The file is not valid TOML: its sections are unknown, so a name missing from them is not
    /// reported again on top of the syntax error.
    pub unparsed: bool,
}

impl Config {
    pub fn section(&self, kind: &str) -> &BTreeMap<String, Table> {
        match kind {
            "breaker" => &self.breakers,
            "budget" => &self.budgets,
            "bulkhead" => &self.bulkheads,
            "rate_limit" => &self.rate_limits,
            "concurrency_limit" => &self.concurrency_limits,
            "client" => &self.clients,
            _ => &self.policies,
        }
    }
}

type Cache = RefCell<HashMap<PathBuf, (Option<SystemTime>, Rc<Config>)>>;

thread_local! {
    /// Parsed files of this compilation, keyed by path; re-read when the file changes (an IDE
    /// keeps the macro loaded across edits).
    static CACHE: Cache = RefCell::new(HashMap::new());
}

/// Loads (or takes from this compilation's cache) the file at `path`.
pub fn load(path: &Path, display: &str) -> Result<Rc<Config>, String> {
    let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    if let Some(c) = CACHE.with(|c| {
        c.borrow()
            .get(path)
            .filter(|(t, _)| *t == mtime)
            .map(|(_, c)| c.clone())
    }) {
        return Ok(c);
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {display}: {e}"))?;
    let config = Rc::new(parse(&text, path.to_path_buf(), display));
    CACHE.with(|c| {
        c.borrow_mut()
            .insert(path.to_path_buf(), (mtime, config.clone()))
    });
    Ok(config)
}

/// Parses a policy file. Never fails: problems land in `errors`.
pub fn parse(text: &str, path: PathBuf, display: &str) -> Config {
    let mut cfg = Config {
        path,
        display: display.to_owned(),
        ..Config::default()
    };
    let root = match toml::de::DeTable::parse(text) {
        Ok(t) => t,
        Err(e) => {
            let (line, col) = e
                .span()
                .map_or((1, 1), |s| resilience_spec::line_col(text, s.start));
            let msg = e.message().trim().to_owned();
            cfg.errors
                .push(format!("{display}:{line}:{col}: TOML syntax error: {msg}"));
            cfg.unparsed = true;
            return cfg;
        }
    };
    let origin_at = |offset: usize, table: &str| {
        let (line, col) = resilience_spec::line_col(text, offset);
        Origin::File {
            file: display.to_owned(),
            line,
            col,
            table: table.to_owned(),
        }
    };
    let convert_err = |errors: &mut Vec<String>, offset: usize, msg: String| {
        let (line, col) = resilience_spec::line_col(text, offset);
        errors.push(format!("{display}:{line}:{col}: {msg}"));
    };
    fn convert(
        v: &toml::Spanned<toml::de::DeValue<'_>>,
        table: &str,
        origin_at: &dyn Fn(usize, &str) -> Origin,
        errors: &mut Vec<String>,
        err: &dyn Fn(&mut Vec<String>, usize, String),
    ) -> Option<Located> {
        use toml::de::DeValue as D;
        let start = v.span().start;
        let value = match v.get_ref() {
            D::String(s) => Value::Str(s.to_string()),
            D::Integer(i) => match resilience_spec::toml_uint(i.as_str(), i.radix()) {
                Some(n) => Value::Int(n),
                None => {
                    err(
                        errors,
                        start,
                        format!("{} is not a non-negative whole number", i.as_str()),
                    );
                    return None;
                }
            },
            D::Float(f) => match resilience_spec::policy_float(f.as_str()) {
                Ok(x) => Value::Float(x),
                Err(why) => {
                    err(errors, start, format!("{} {why}", f.as_str()));
                    return None;
                }
            },
            D::Boolean(b) => Value::Bool(*b),
            D::Datetime(_) => {
                err(
                    errors,
                    start,
                    "dates are not policy values; durations are strings like \"5s\"".into(),
                );
                return None;
            }
            D::Array(items) => Value::List(
                items
                    .iter()
                    .filter_map(|it| convert(it, table, origin_at, errors, err))
                    .collect(),
            ),
            D::Table(t) => Value::Table(
                t.iter()
                    .filter_map(|(k, v)| {
                        Some((
                            k.get_ref().to_string(),
                            convert(v, table, origin_at, errors, err)?,
                        ))
                    })
                    .collect(),
            ),
        };
        Some(Located {
            value,
            origin: origin_at(start, table),
        })
    }
    for (key, value) in root.get_ref().iter() {
        let name = key.get_ref().to_string();
        let key_start = key.span().start;
        if !SECTIONS.contains(&name.as_str()) {
            let hint = did_you_mean(&name, SECTIONS)
                .map(|s| format!("; did you mean [{s}]?"))
                .unwrap_or_default();
            convert_err(
                &mut cfg.errors,
                key_start,
                format!(
                    "unknown section [{name}]{hint} (known: {})",
                    SECTIONS.join(", ")
                ),
            );
            continue;
        }
        let Some(tbl) = value.get_ref().as_table() else {
            convert_err(
                &mut cfg.errors,
                key_start,
                format!("[{name}] must be a table"),
            );
            continue;
        };
        let entries_of = |t: &toml::de::DeTable<'_>,
                          label: &str,
                          errors: &mut Vec<String>|
         -> Vec<(String, Located)> {
            t.iter()
                .filter_map(|(k, v)| {
                    Some((
                        k.get_ref().to_string(),
                        convert(v, label, &origin_at, errors, &convert_err)?,
                    ))
                })
                .collect()
        };
        if name == "defaults" {
            let entries = entries_of(tbl, "defaults", &mut cfg.errors);
            cfg.defaults = Some(Table {
                entries,
                origin: origin_at(key_start, "defaults"),
            });
            continue;
        }
        for (sub, subval) in tbl.iter() {
            let sub_name = sub.get_ref().to_string();
            let label = format!("{name}.{sub_name}");
            let Some(t) = subval.get_ref().as_table() else {
                convert_err(
                    &mut cfg.errors,
                    sub.span().start,
                    format!(
                        "[{name}] holds named tables: write [{name}.{sub_name}] and its keys below it"
                    ),
                );
                continue;
            };
            // `breaker = "off"` (or `"none"`) turns the breaker off, whatever the file names:
            // a shared state so named could never be used.
            if name != "policies" && matches!(sub_name.as_str(), "off" | "none") {
                convert_err(
                    &mut cfg.errors,
                    sub.span().start,
                    format!(
                        "[{label}] can never be used: `{} = \"{sub_name}\"` turns it off; give it another name",
                        name.trim_end_matches('s')
                    ),
                );
                continue;
            }
            let entries = entries_of(t, &label, &mut cfg.errors);
            let table = Table {
                entries,
                origin: origin_at(sub.span().start, &label),
            };
            let map = match name.as_str() {
                "policies" => &mut cfg.policies,
                "breakers" => &mut cfg.breakers,
                "budgets" => &mut cfg.budgets,
                "bulkheads" => &mut cfg.bulkheads,
                "rate_limits" => &mut cfg.rate_limits,
                "concurrency_limits" => &mut cfg.concurrency_limits,
                _ => &mut cfg.clients,
            };
            map.insert(sub_name, table);
        }
    }
    cfg
}

/// Where the file is for the crate being compiled, if anywhere, and how to name it.
/// `manifest_dir` is the crate's (the macro's `CARGO_MANIFEST_DIR`); `source_dir` the
/// directory of the source file.
pub fn locate(
    explicit: Option<&str>,
    manifest_dir: Option<&Path>,
    source_dir: Option<&Path>,
) -> Result<Option<(PathBuf, String)>, String> {
    let manifest_dir = manifest_dir.map(Path::to_path_buf);
    // The crate's `[package.metadata.resilience]`, read (and checked) only where no file is
    // named inline.
    let wanted = match (explicit, manifest_dir.as_deref()) {
        (Some(e), _) => Some(e.to_owned()),
        (None, Some(dir)) => metadata_config(dir)?,
        (None, None) => None,
    };
    match wanted {
        Some(rel) => {
            let mut tried = Vec::new();
            // The crate's `[package.metadata.resilience] config` is relative to its
            // `Cargo.toml` alone, as `resilience check` reads it: one file for every function,
            // wherever its source is.
            let source_dir = source_dir.filter(|_| explicit.is_some());
            for base in [manifest_dir.as_deref(), source_dir].into_iter().flatten() {
                let p = base.join(&rel);
                if p.is_file() {
                    // The source file's directory comes relative to the compiler's working
                    // directory (the workspace's root), while `include_str!` reads a relative
                    // path from the file it is written in: the path is made absolute.
                    return Ok(Some((std::path::absolute(&p).unwrap_or(p), rel)));
                }
                tried.push(p.display().to_string());
            }
            if Path::new(&rel).is_absolute() && Path::new(&rel).is_file() {
                return Ok(Some((PathBuf::from(&rel), rel)));
            }
            Err(format!(
                "policy file `{rel}` not found (looked at {})",
                tried.join(", ")
            ))
        }
        None => {
            let Some(dir) = manifest_dir else {
                return Ok(None);
            };
            let p = dir.join(FILE_NAME);
            if p.is_file() {
                return Ok(Some((p, FILE_NAME.to_owned())));
            }
            // Something is there that is not a file it can read (a directory, a link to nothing):
            // said, not taken for no file (its `[defaults]` dropped without a word).
            match std::fs::symlink_metadata(&p) {
                Ok(_) => Err(format!(
                    "cannot read {}: it is not a file (a directory, or a link to nothing)",
                    p.display()
                )),
                Err(_) => Ok(None),
            }
        }
    }
}

/// `[package.metadata.resilience] config = "…"` in the crate's `Cargo.toml`. A table there
/// with another key, or a `config` that is not a string, is an error: a misspelled `conifg`
/// would otherwise choose no file, silently.
fn metadata_config(manifest_dir: &Path) -> Result<Option<String>, String> {
    let path = manifest_dir.join("Cargo.toml");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    // Every annotated function asks: the text is read each time (an IDE keeps the macro loaded
    // across edits), parsed only when it changed.
    if let Some(found) = MANIFESTS.with(|c| {
        c.borrow()
            .get(&path)
            .filter(|(seen, _)| *seen == text)
            .map(|(_, found)| found.clone())
    }) {
        return found;
    }
    let found = parse_metadata_config(&text);
    MANIFESTS.with(|c| c.borrow_mut().insert(path, (text, found.clone())));
    found
}

type Manifests = RefCell<HashMap<PathBuf, (String, Result<Option<String>, String>)>>;

thread_local! {
    /// What each `Cargo.toml` of this compilation says in `[package.metadata.resilience]`, by
    /// the text it was read from.
    static MANIFESTS: Manifests = RefCell::new(HashMap::new());
}

fn parse_metadata_config(text: &str) -> Result<Option<String>, String> {
    let Ok(root) = toml::de::DeTable::parse(text) else {
        return Ok(None);
    };
    let Some(v) = root
        .get_ref()
        .get("package")
        .and_then(|p| p.get_ref().get("metadata"))
        .and_then(|m| m.get_ref().get("resilience"))
    else {
        return Ok(None);
    };
    let Some(table) = v.get_ref().as_table() else {
        return Err(
            "Cargo.toml: [package.metadata.resilience] is a table: config = \"path/to/resilience.toml\""
                .to_owned(),
        );
    };
    for (key, _) in table.iter() {
        let key: &str = key.get_ref();
        if key != "config" {
            let hint = crate::value::did_you_mean(key, &["config"])
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            return Err(format!(
                "Cargo.toml: unknown key `{key}` in [package.metadata.resilience]{hint} (it takes config = \"path/to/resilience.toml\")"
            ));
        }
    }
    match table.get("config").map(|c| c.get_ref().as_str()) {
        None => Ok(None),
        Some(Some(rel)) => Ok(Some(rel.to_owned())),
        Some(None) => Err(
            "Cargo.toml: [package.metadata.resilience] config takes a path: config = \"path/to/resilience.toml\""
                .to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[package.metadata.resilience]` chooses the file; a misspelled key in it is an error,
    /// not a silent fall back to `resilience.toml`.
    #[test]
    fn the_metadata_table_is_read_and_its_typos_refused() {
        let dir = std::env::temp_dir().join(format!("metadata-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("policy")).unwrap();
        std::fs::write(dir.join("policy/p.toml"), "").unwrap();
        std::fs::write(dir.join(FILE_NAME), "").unwrap();
        let manifest = |table: &str| {
            std::fs::write(
                dir.join("Cargo.toml"),
                format!("[package]\nname = \"x\"\n\n[package.metadata.resilience]\n{table}\n"),
            )
            .unwrap();
            locate(None, Some(&dir), None)
        };
        let (path, display) = manifest("config = \"policy/p.toml\"").unwrap().unwrap();
        assert!(path.ends_with("policy/p.toml"), "{}", path.display());
        assert_eq!(display, "policy/p.toml");
        let e = manifest("conifg = \"policy/p.toml\"").unwrap_err();
        assert!(
            e.contains("unknown key `conifg`") && e.contains("did you mean `config`"),
            "{e}"
        );
        let e = manifest("config = 5").unwrap_err();
        assert!(e.contains("config takes a path"), "{e}");
        // A file named inline: the table is not read.
        std::fs::write(
            dir.join("Cargo.toml"),
            "[package]\nname = \"x\"\n\n[package.metadata.resilience]\nconifg = 1\n",
        )
        .unwrap();
        let (_, display) = locate(Some("policy/p.toml"), Some(&dir), None)
            .unwrap()
            .unwrap();
        assert_eq!(display, "policy/p.toml");
        // The table's file is relative to Cargo.toml alone, as `resilience check` reads it:
        // not found beside a source file.
        std::fs::write(
            dir.join("Cargo.toml"),
            "[package]\nname = \"x\"\n\n[package.metadata.resilience]\nconfig = \"only-in-src.toml\"\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::write(dir.join("src/only-in-src.toml"), "").unwrap();
        let e = locate(None, Some(&dir), Some(&dir.join("src"))).unwrap_err();
        assert!(e.contains("only-in-src.toml` not found"), "{e}");
        // No table: the file beside Cargo.toml.
        std::fs::write(dir.join("Cargo.toml"), "[package]\nname = \"x\"\n").unwrap();
        let (_, display) = locate(None, Some(&dir), None).unwrap().unwrap();
        assert_eq!(display, FILE_NAME);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A file found beside the source file, whose directory the compiler gives relative to its
    /// working directory: the path handed to `include_str!` is absolute (a relative one is
    /// read from the source file's own directory, where it names another place).
    /// A `resilience.toml` that is a directory, or a link to nothing, is an error, not taken
    /// for no file (its `[defaults]` dropped without a word).
    #[test]
    fn a_policy_file_that_is_no_file_is_an_error() {
        let dir = std::env::temp_dir().join(format!("no-file-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join(FILE_NAME)).unwrap();
        let e = locate(None, Some(&dir), None).unwrap_err();
        assert!(e.contains("not a file"), "{e}");
        std::fs::remove_dir(dir.join(FILE_NAME)).unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.join("gone.toml"), dir.join(FILE_NAME)).unwrap();
            let e = locate(None, Some(&dir), None).unwrap_err();
            assert!(e.contains("not a file"), "{e}");
            std::fs::remove_file(dir.join(FILE_NAME)).unwrap();
        }
        assert_eq!(locate(None, Some(&dir), None), Ok(None));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_beside_the_source_is_found_by_an_absolute_path() {
        let dir = PathBuf::from(format!("locate-test-{}/src/api", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("p.toml"), "").unwrap();
        let elsewhere = std::env::temp_dir();
        let found = locate(Some("p.toml"), Some(&elsewhere), Some(&dir));
        std::fs::remove_dir_all(dir.components().next().unwrap()).unwrap();
        let (path, display) = found.unwrap().expect("found");
        assert!(path.is_absolute(), "{}", path.display());
        assert!(path.ends_with("src/api/p.toml"), "{}", path.display());
        assert_eq!(display, "p.toml");
    }

    fn p(text: &str) -> Config {
        parse(text, PathBuf::from("/x/resilience.toml"), "resilience.toml")
    }

    #[test]
    fn sections_and_positions() {
        let c = p(
            "[defaults]\ntimeout = \"2s\"\n\n[policies.payments]\nmax_attempts = 2\nretry_on = [\"connect\", 503]\n\n[breakers.pg]\nwindow = 20\n",
        );
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        let d = c.defaults.unwrap();
        assert_eq!(d.entries[0].0, "timeout");
        assert!(matches!(
            &d.entries[0].1.origin,
            Origin::File {
                line: 2,
                col: 11,
                ..
            }
        ));
        let pay = &c.policies["payments"];
        assert!(matches!(
            &pay.entries[0].1.origin,
            Origin::File { line: 5, .. }
        ));
        assert_eq!(pay.entries[1].1.render(), "[\"connect\", 503]");
        assert!(c.breakers.contains_key("pg"));
    }

    /// A number too small for `f64` is refused where it is written, not read as 0 (a budget
    /// whose ratio read 0 bought no retries).
    #[test]
    fn a_number_too_small_to_tell_from_zero_is_refused() {
        let c = p("[budgets.pay]\nratio = 1e-400\n");
        assert_eq!(c.errors.len(), 1, "{:?}", c.errors);
        assert!(
            c.errors[0].starts_with("resilience.toml:2:9:")
                && c.errors[0]
                    .ends_with("1e-400 is too small to tell from 0: write 0, or a larger number"),
            "{}",
            c.errors[0]
        );
        assert!(p("[budgets.pay]\nratio = 0.0\n").errors.is_empty());
    }

    /// A place in a message is where an editor shows it: a byte order mark and an accented
    /// name before the value shift nothing.
    #[test]
    fn a_place_is_where_an_editor_shows_it() {
        let c = p("\u{feff}[budgets]\n\"été\" = { ratio = 1e-400 }\n");
        assert_eq!(c.errors.len(), 1, "{:?}", c.errors);
        assert!(
            c.errors[0].starts_with("resilience.toml:2:19:"),
            "{}",
            c.errors[0]
        );
        let c = p("\u{feff}max_attempts = [\n");
        assert!(
            c.errors[0].starts_with("resilience.toml:1:"),
            "{}",
            c.errors[0]
        );
    }

    /// A shared state named `off` or `none` could never be used (`breaker = "off"` turns the
    /// breaker off): refused with its place, not kept and checked for nothing.
    #[test]
    fn a_state_named_off_or_none_is_refused() {
        let c = p("[breakers.off]\nwindow = 20\n\n[budgets.none]\nratio = 0.1\n");
        assert_eq!(c.errors.len(), 2, "{:?}", c.errors);
        assert!(
            c.errors[0].starts_with("resilience.toml:1:11:")
                && c.errors[0].contains("[breakers.off] can never be used: `breaker = \"off\"`"),
            "{}",
            c.errors[0]
        );
        assert!(
            c.errors[1].contains("`budget = \"none\"` turns it off"),
            "{}",
            c.errors[1]
        );
        assert!(c.breakers.is_empty() && c.budgets.is_empty());
        // A policy may be called so; not a client (`client = "off"` turns the client off).
        assert!(p("[policies.none]\nmax_attempts = 1\n").errors.is_empty());
        let c = p("[clients.off]\nconnect_timeout = \"1s\"\n");
        assert!(
            c.errors[0].contains("`client = \"off\"` turns it off"),
            "{:?}",
            c.errors
        );
    }

    #[test]
    fn syntax_errors_have_positions() {
        let c = p("[defaults]\ntimeout = \n");
        assert_eq!(c.errors.len(), 1);
        assert!(
            c.errors[0].starts_with("resilience.toml:2:"),
            "{}",
            c.errors[0]
        );
    }

    #[test]
    fn unknown_sections_suggest() {
        let c = p("[polices.a]\nx = 1\n");
        assert!(
            c.errors[0].contains("did you mean [policies]"),
            "{}",
            c.errors[0]
        );
        assert!(
            c.errors[0].starts_with("resilience.toml:1:2:"),
            "{}",
            c.errors[0]
        );
    }

    #[test]
    fn negative_numbers_and_dates_are_errors() {
        let c = p("[defaults]\nmax_attempts = -1\nwhen = 1979-05-27\n");
        assert_eq!(c.errors.len(), 2, "{:?}", c.errors);
    }
}
