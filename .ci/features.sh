#!/usr/bin/env bash
# The runtime with each optional feature alone and with none: a user's `Cargo.toml` picks any
# of them, and the workspace's own builds unify them all on (the root package turns `redis`
# on), so a `#[cfg]` slip would otherwise go unseen. Then the command-line tool with the
# runtime's default features only, as `cargo install --path resilience-cli` builds it.
set -euo pipefail
cd "$(dirname "$0")/.."
for f in "" anyhow server redis metrics opentelemetry reqwest-middleware; do
  echo ".ci/features.sh: resilience-runtime, features: ${f:-none}" >&2
  cargo clippy --quiet -p resilience-runtime --no-default-features ${f:+--features "$f"} -- -D warnings
done
echo ".ci/features.sh: resilience-cli on its own" >&2
cargo clippy --quiet -p resilience-cli -- -D warnings
