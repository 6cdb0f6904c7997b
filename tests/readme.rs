//! The README's Rust examples, as written. Each region between a `// README:` marker and
//! `// README end` below is one of the README's ```rust blocks, byte for byte once its
//! indentation is taken off, and every such block of the README is one of them: an example
//! edited in one place and not the other fails `every_rust_example_of_the_readme_is_compiled_here`.
//! The quick start's `policy = "payments"` reads the README's `resilience.toml` block, which
//! is the `resilience.toml` beside this package's `Cargo.toml` (checked the same way).
//! Its run-time overrides example is read by the override reader as written.
//!
//! The quick start's functions call `https://` hosts, which no test on loopback reaches: they
//! are compiled here (their policy checked at compile time) and not run. The idempotency
//! layer's example is served on loopback and asked twice with one key.

#![allow(dead_code)]

use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
struct User {
    id: u64,
    name: String,
}

#[derive(Debug, Serialize)]
struct Order {
    id: u64,
    cents: u64,
}

#[derive(Debug, Deserialize)]
struct Receipt {
    id: String,
}

// As the README writes it, not as rustfmt would.
#[rustfmt::skip]
mod quick_start {
    use super::{Order, Receipt, User};

    // README: quick start
    use resilience_runtime::{resilient, Error};

    #[resilient(timeout = "2s", deadline = "5s")]            // GET: retried on transient failures
    async fn user(http: &reqwest::Client, id: u64) -> Result<User, Error> {
        Ok(http.get(format!("https://users.internal/users/{id}"))
            .send().await?                                  // X-Request-Id, traceparent, X-Attempt, X-Timeout-Ms
            .error_for_status()?                            // status and Retry-After already recorded
            .json().await?)
    }

    #[resilient(policy = "payments")]                       // settings from resilience.toml
    async fn charge(pg: &reqwest::Client, order: &Order) -> Result<Receipt, Error> {
        Ok(pg.post("https://pg.example/charges")            // POST: inferred from the body
            .json(order)
            .send().await?                                  // + Idempotency-Key, same on every attempt
            .error_for_status()?
            .json().await?)
    }
    // README end
}

/// The idempotency layer's example, served on loopback: the handler runs once for two
/// requests with one key, and a request without a key is refused.
// As the README writes it, not as rustfmt would.
#[rustfmt::skip]
mod idempotency_layer {
    use std::sync::atomic::{AtomicU32, Ordering};

    pub static RUNS: AtomicU32 = AtomicU32::new(0);

    async fn charge() -> &'static str {
        RUNS.fetch_add(1, Ordering::SeqCst);
        "charged"
    }

    pub fn app() -> axum::Router {
        // README: idempotency layer
        use axum::{Router, routing::post};
        use resilience_runtime::server::{IdempotencyLayer, MemoryStore};

        let app: Router = Router::new()
            .route("/charges", post(charge))
            .layer(IdempotencyLayer::new(MemoryStore::default()).require_key(true));
        // README end
        app
    }
}

/// The Redis Cluster example: compiled, not run (its nodes are not on loopback).
// As the README writes it, not as rustfmt would.
#[rustfmt::skip]
mod redis_cluster {
    use resilience_runtime::server::RedisStore;

    async fn setup() -> Result<RedisStore, Box<dyn std::error::Error>> {
        // README: redis cluster
        let nodes = ["redis://10.0.0.1:6379/", "redis://10.0.0.2:6379/", "redis://10.0.0.3:6379/"];
        let store = RedisStore::connect_cluster(nodes).await?;      // or RedisStore::new_cluster(conn)
        resilience_runtime::ratelimit::connect_redis_cluster(nodes).await?; // or use_redis_cluster(conn)
        // README end
        Ok(store)
    }
}

/// The OpenTelemetry example: compiled, not run (it installs a global subscriber).
#[cfg(feature = "opentelemetry")]
// As the README writes it, not as rustfmt would.
#[rustfmt::skip]
mod opentelemetry_setup {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    fn setup(provider: &SdkTracerProvider) {
        // README: opentelemetry
        // A service already set up with tracing-opentelemetry:
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("checkout")))
            .init();
        // README end
    }
}

/// The metrics example: compiled, not run (it installs the global recorder).
#[cfg(feature = "metrics")]
// As the README writes it, not as rustfmt would.
#[rustfmt::skip]
mod metrics_setup {
    use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

    fn setup() -> Result<PrometheusHandle, Box<dyn std::error::Error>> {
        // README: metrics
        let prometheus = PrometheusBuilder::new()
            .with_recommended_naming(true)
            .set_buckets(&resilience_runtime::telemetry::HTTP_DURATION_BUCKETS)?
            .install_recorder()?;
        resilience_runtime::telemetry::describe_metrics(); // units and help texts
        // serve prometheus.render() at /metrics
        // README end
        Ok(prometheus)
    }
}

/// The longer buckets for durations past 10 s: compiled here (it installs the global
/// recorder); `tests/metrics.rs` runs the same builder with a local one.
#[cfg(feature = "metrics")]
// As the README writes it, not as rustfmt would.
#[rustfmt::skip]
mod longer_buckets {
    use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

    fn setup() -> Result<PrometheusHandle, Box<dyn std::error::Error>> {
        // README: longer buckets
        use metrics_exporter_prometheus::Matcher;
        let longer = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0];
        let prometheus = PrometheusBuilder::new()
            .with_recommended_naming(true)
            .set_buckets_for_metric(Matcher::Suffix("duration".into()), &longer)?      // both durations' names
            .install_recorder()?;
        // README end
        Ok(prometheus)
    }
}

/// The README's fenced blocks of one language: their text, without the fences.
fn blocks(readme: &str, lang: &str) -> Vec<String> {
    let open = format!("```{lang}\n");
    let mut out = Vec::new();
    let mut rest = readme;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let end = body.find("\n```").expect("a fenced block is closed");
        out.push(body[..end + 1].to_owned());
        rest = &body[end + 4..];
    }
    out
}

/// This file's marked regions, by name, each without the indentation of its marker.
fn regions(source: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<(String, usize, String)> = None;
    for line in source.lines() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("// README: ") {
            assert!(current.is_none(), "a region opened inside another: {name}");
            current = Some((name.to_owned(), line.len() - trimmed.len(), String::new()));
        } else if trimmed == "// README end" {
            let (name, _, text) = current.take().expect("a region ends after it opens");
            out.push((name, text));
        } else if let Some((_, indent, text)) = &mut current {
            let line = if line.trim().is_empty() {
                ""
            } else {
                assert!(
                    line[..*indent].trim().is_empty(),
                    "a line of a region indented less than its marker: {line:?}"
                );
                &line[*indent..]
            };
            text.push_str(line);
            text.push('\n');
        }
    }
    assert!(current.is_none(), "a region is not closed");
    out
}

#[test]
fn every_rust_example_of_the_readme_is_compiled_here() {
    let readme = include_str!("../README.md");
    let here = regions(include_str!("readme.rs"));
    let names: Vec<&str> = here.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "quick start",
            "idempotency layer",
            "redis cluster",
            "opentelemetry",
            "metrics",
            "longer buckets",
        ],
        "the regions of this file"
    );
    let examples = blocks(readme, "rust");
    for block in &examples {
        assert!(
            here.iter().any(|(_, text)| text == block),
            "a README example compiled nowhere here (or edited in one place only):\n{block}"
        );
    }
    for (name, text) in &here {
        assert!(
            examples.contains(text),
            "the region `{name}` of tests/readme.rs is not a README example as written:\n{text}"
        );
    }
}

#[test]
fn the_readme_policy_file_is_the_one_beside_cargo_toml() {
    let readme = include_str!("../README.md");
    let file = include_str!("../resilience.toml");
    let toml_blocks = blocks(readme, "toml");
    let policy = toml_blocks
        .iter()
        .find(|b| b.starts_with("# resilience.toml, beside Cargo.toml\n"))
        .expect("the README shows a resilience.toml");
    assert!(
        file.ends_with(policy.as_str()),
        "resilience.toml ends with the README's block as written:\n{policy}"
    );
}

/// The run-time overrides example is a file the override reader takes (a misspelt key in it
/// would be refused whole).
#[test]
fn the_readme_overrides_example_is_read_as_written() {
    let readme = include_str!("../README.md");
    let toml_blocks = blocks(readme, "toml");
    let example = toml_blocks
        .iter()
        .find(|b| b.starts_with("# overrides.toml\n"))
        .expect("the README shows an overrides.toml");
    if let Err(e) = resilience_runtime::overrides::check(example, "overrides.toml", &[]) {
        panic!("the README's overrides.toml is refused: {e}");
    }
    // The same check refuses a file with a misspelt key: it can fail.
    let misspelt = example.replace("max_attempts", "max_atempts");
    assert!(resilience_runtime::overrides::check(&misspelt, "overrides.toml", &[]).is_err());
}

#[tokio::test]
async fn the_idempotency_layer_example_runs_a_keyed_request_once() {
    use std::sync::atomic::Ordering;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, idempotency_layer::app()).await });
    let c = reqwest::Client::new();
    let url = format!("http://{addr}/charges");
    let send = |key: Option<&str>| {
        let mut rb = c.post(&url).body("{}");
        if let Some(k) = key {
            rb = rb.header("Idempotency-Key", k);
        }
        rb.send()
    };
    let first = send(Some("\"order-7\"")).await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.text().await.unwrap(), "charged");
    let again = send(Some("\"order-7\"")).await.unwrap();
    assert_eq!(
        again.status(),
        200,
        "the same key is answered by the replay"
    );
    assert_eq!(again.text().await.unwrap(), "charged");
    assert_eq!(
        idempotency_layer::RUNS.load(Ordering::SeqCst),
        1,
        "two requests with one key ran the handler once"
    );
    let unkeyed = send(None).await.unwrap();
    assert_eq!(
        unkeyed.status(),
        400,
        "require_key(true) refuses a POST without a key"
    );
    assert_eq!(idempotency_layer::RUNS.load(Ordering::SeqCst), 1);
}
