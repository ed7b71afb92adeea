#!/usr/bin/env bash
# Runs the whole test suite: installs its dependencies (Nix 2.8 from Debian),
# then every Rust test, including the differential tests against real Nix
# and the replay of all committed fuzz inputs.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

# Nix runs as root against the machine's local store, without a daemon.
export NIX_CONFIG=$'experimental-features = nix-command\nsandbox = false\nbuild-users-group ='
# Tests that need Nix fail rather than skip when it is missing.
export NIXFERRY_REQUIRE_NIX=1

# Benches and fuzz-free targets must at least build.
cargo build --workspace --all-targets --locked
cargo test --workspace --locked
