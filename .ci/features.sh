#!/usr/bin/env bash
# The runtime with each optional feature alone and with none: a user's `Cargo.toml` picks any
# of them, and the workspace's own builds unify them all on (the root package turns `redis`
# on), so a `#[cfg]` slip would otherwise go unseen. Then the command-line tool with the
# runtime's default features only, as `cargo install --path resilience-cli` builds it.
set -euo pipefail
cd "$(dirname "$0")/.."
for f in "" anyhow eyre server redis metrics opentelemetry reqwest-middleware; do
  echo ".ci/features.sh: resilience-runtime, features: ${f:-none}" >&2
  cargo clippy --quiet -p resilience-runtime --no-default-features ${f:+--features "$f"} -- -D warnings
done
echo ".ci/features.sh: resilience-cli on its own" >&2
cargo clippy --quiet -p resilience-cli -- -D warnings
# What `#[resilient]` generates, compiled in a crate of a user's whose runtime has no optional
# feature, in each edition a user's crate may be written in (the expansion's tokens take the
# user's edition): the shapes of ui-tests/tests/ui/pass, each a module of it.
dir=target/downstream
mkdir -p "$dir/src"
root=$(pwd)
: >"$dir/src/lib.rs"
for f in ui-tests/tests/ui/pass/*.rs; do
  echo "#[allow(dead_code, unused)] #[path = \"$root/$f\"] mod $(basename "$f" .rs);" >>"$dir/src/lib.rs"
done
for edition in 2024 2021 2018; do
  cat >"$dir/Cargo.toml" <<TOML
[package]
name = "downstream"
version = "0.0.0"
edition = "$edition"
publish = false

[dependencies]
resilience-runtime = { path = "$root/resilience-runtime", default-features = false }
reqwest = { version = "0.13", default-features = false }
tokio = { version = "1", features = ["full"] }
http = "1"

[workspace]
TOML
  # The workspace's versions, not whatever is newest.
  cp Cargo.lock "$dir/Cargo.lock"
  echo ".ci/features.sh: ui-tests/tests/ui/pass in a crate of its own, edition $edition, the runtime without features" >&2
  CARGO_TARGET_DIR="$root/target" cargo check --quiet --manifest-path "$dir/Cargo.toml"
done
