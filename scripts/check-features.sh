#!/usr/bin/env bash
# Builds (with clippy, warnings as errors) every feature set of the library
# that the README offers ("Layers"): the format crate alone, the core
# without any store but file://, each store, codec and the server on their
# own, and everything (the default, which the rest of the suite builds).
set -euo pipefail
cd "$(dirname "$0")/.."

lint() {
    echo "== $*" >&2
    cargo clippy --locked --lib "$@" -- -D warnings
}

# Formats: no async runtime, no network, no C libraries.
lint -p nixferry-formats
# The core with file:// caches only (uncompressed NAR files).
lint -p nixferry --no-default-features
for feature in local ssh http s3 server xz zstd bzip2 brotli; do
    lint -p nixferry --no-default-features --features "$feature"
done
# A typical client: HTTP and S3 caches with zstd, no local store.
lint -p nixferry --no-default-features --features http,s3,zstd
