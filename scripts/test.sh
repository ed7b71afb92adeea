#!/usr/bin/env bash
# Runs the whole test suite: installs its dependencies (Nix 2.8 and OpenSSH
# from Debian, an S3 server from PyPI), checks formatting, lints (clippy) and
# docs with warnings as errors, builds the benches and the fuzz targets, then
# runs every Rust test, including the differential tests against real Nix,
# the SSH tests against an sshd they start, the S3 tests against an S3
# server they start, the replay of all committed fuzz inputs, and the Python
# package's tests.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

# Nix runs as root against the machine's local store, without a daemon.
export NIX_CONFIG=$'experimental-features = nix-command\nsandbox = false\nbuild-users-group ='
# Tests that need Nix fail rather than skip when it is missing.
export NIXFERRY_REQUIRE_NIX=1

# A virtualenv under target/ with the Python tools: the S3 server the S3
# tests start (moto), and what builds and checks the Python package.
python3 -m venv target/py-venv
target/py-venv/bin/pip install --quiet --upgrade maturin pytest mypy 'moto[server]==5.2.5'
export NIXFERRY_TEST_PYTHON="$PWD/target/py-venv/bin/python"

# Formatting, lints and docs: warnings are errors.
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Each feature set of the library that the README offers builds on its own.
scripts/check-features.sh
# The binary is named like the library, so its docs (private items
# included) are checked on their own, before the library's are written.
RUSTDOCFLAGS='-D warnings' cargo rustdoc -p nixferry-cli --bin nixferry --locked
RUSTDOCFLAGS='-D warnings' cargo doc --workspace --no-deps --locked

# Benches must at least build.
cargo build --workspace --all-targets --locked
# So must every fuzz target (on stable, without the sanitizers `cargo fuzz`
# adds); the test run below replays their committed inputs. The fuzz
# workspace has its own lock file; built into the same target directory
# with the same optimisation of dependencies, it reuses their builds.
cargo build --manifest-path fuzz/Cargo.toml --locked --bins --target-dir target \
    --config 'profile.dev.package."*".opt-level=3' \
    --config 'profile.dev.package.nixferry.opt-level=0'

cargo test --workspace --locked

# The Python package: built and installed into the virtualenv, then its
# tests (which use Nix too) and the check of its type stubs.
target/py-venv/bin/pip install --quiet ./crates/py
(cd crates/py && ../../target/py-venv/bin/python -m pytest -q tests)
target/py-venv/bin/python -m mypy.stubtest nixferry
