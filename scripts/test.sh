#!/usr/bin/env bash
# CheckSync's one entry point for all checks; CI (.ci/run) calls exactly this.
# Installs what is missing (Go toolchains, cargo-fuzz), builds the Go fixtures with
# both toolchains, then: fmt, clippy, the whole cargo test suite, a bounded fuzz run.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
bash scripts/setup.sh

step() { printf '\n==> %s\n' "$*" >&2; }

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "build (release binaries used by the end-to-end tests)"
cargo build --workspace --release --bins

step "cargo test"
cargo test --workspace --release -- --test-threads="${CS_TEST_THREADS:-2}"

if [ -d fuzz ] && [ -f fuzz/Cargo.toml ]; then
  step "bounded fuzz run (cargo +nightly fuzz run format, ${CS_FUZZ_SECONDS:-60} s)"
  (cd fuzz && cargo +nightly fuzz run format -- -max_total_time="${CS_FUZZ_SECONDS:-60}" -rss_limit_mb=2048)
fi
