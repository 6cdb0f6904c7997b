//! Shared by the test binaries that `mod support;` it; each uses a part of it.
#![allow(dead_code)]

use std::io::Write;
use std::sync::{Arc, Mutex};

/// What a `tracing_subscriber::fmt` subscriber writes, kept to be read back.
#[derive(Clone, Default)]
pub struct Buf(pub Arc<Mutex<Vec<u8>>>);

impl Buf {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A `tracing_subscriber::fmt` subscriber at `level` writing into a [`Buf`], current on this
/// thread while the guard lives; with `new_spans`, it also writes a line for each span opened.
pub fn capture(level: tracing::Level, new_spans: bool) -> (Buf, tracing::subscriber::DefaultGuard) {
    use tracing_subscriber::fmt::format::FmtSpan;
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .with_span_events(if new_spans {
            FmtSpan::NEW
        } else {
            FmtSpan::NONE
        })
        .finish();
    (buf, tracing::subscriber::set_default(subscriber))
}

/// The Redis server of the store and rate-limit tests (`RESILIENCE_REDIS_URL`, else
/// `.ci/redis.sh`'s port), if it answers PING; `None` (skip) if not, unless `CI` is set: then
/// it fails.
pub async fn redis_url() -> Option<String> {
    let url = std::env::var("RESILIENCE_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6399/".to_owned());
    let ping = async {
        let client = redis::Client::open(url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(std::time::Duration::from_secs(2), ping).await {
        Ok(Ok(_)) => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI is set but Redis at {url} is unreachable")
        }
        _ => {
            let _ = writeln!(
                std::io::stderr(),
                "skipping: Redis at {url} is unreachable; start it with .ci/redis.sh"
            );
            None
        }
    }
}

/// Asserts that the compiler lists each of `files` (relative to the package root) among the
/// files this test binary was built from, in the dep-info it writes beside the binary: Cargo
/// rebuilds the binary when one of them changes.
pub fn assert_built_from(files: &[&str]) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dep_info = exe.with_extension("d");
    let text = std::fs::read_to_string(&dep_info)
        .unwrap_or_else(|e| panic!("{}: {e}", dep_info.display()));
    for file in files {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        // One `path:` line per file read; a space in a path is written `\ `.
        let entry = format!("\n{}:", path.display().to_string().replace(' ', "\\ "));
        assert!(
            text.contains(&entry),
            "{file} is not among the files this crate was built from: editing it would not rebuild it"
        );
    }
}

/// Runs the ignored test `test` of this test binary in a child process, with `env` set (the
/// child test returns at once without it), and asserts that it ran and passed: for what can be
/// done once per process, such as installing a global recorder.
pub fn run_in_child(test: &str, env: &str) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", test, "--nocapture"])
        .env(env, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "the child ran no test: {text}");
}
