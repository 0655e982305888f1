#!/usr/bin/env bash
# CheckSync's one entry point for all checks; CI (.ci/run) calls exactly this.
# Installs what is missing (Go toolchains, cargo-fuzz), builds the Go fixtures with
# both toolchains, then: fmt, clippy, the Go tests, the whole cargo test suite
# (unit, property, golden, end-to-end on real processes), a bounded fuzz run.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
bash scripts/setup.sh

step() { printf '\n==> %s\n' "$*" >&2; }

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --all-targets -- -D warnings (workspace, then the stub executable on its own)"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p restore-stub --features bin --bins -- -D warnings

step "build: release binaries the end-to-end tests run (cs-driver, cs-restore-stub)"
cargo build --release -p cs-driver
cargo build --release -p restore-stub --features bin

step "build the Go fixtures with both toolchains, and run their Go tests"
bash scripts/build-fixtures.sh test >/dev/null

step "cargo test (release)"
cargo test --workspace --release -- --test-threads="${CS_TEST_THREADS:-2}"

step "bounded fuzz run: cargo +nightly fuzz run format (${CS_FUZZ_SECONDS:-60} s)"
(cd fuzz && cargo +nightly fuzz run format -- -max_total_time="${CS_FUZZ_SECONDS:-60}" -rss_limit_mb=2048 2>&1 | tail -n 5)
echo "fuzz: no crash in ${CS_FUZZ_SECONDS:-60} s" >&2
