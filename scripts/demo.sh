#!/usr/bin/env bash
# The main job on an embedded default: pack this project's own source tree as
# the store path `nix-store --add` would make, put it into a signed file://
# binary cache, verify it, and copy it into a second, zstd-compressed cache
# with its signature checked. Needs no Nix and no server.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -q -p nixferry-cli
nf=target/release/nixferry
work=target/demo
rm -rf "$work"
mkdir -p "$work"

input=${1:-crates/core/src}
cache="$PWD/$work/cache"

echo "== key generate demo-1"
$nf key generate demo-1 --secret-file "$work/demo-1.secret" --public-file "$work/demo-1.public"
cat "$work/demo-1.public"; echo

echo "== nar hash $input"
$nf nar hash "$input"

echo "== add $input --to file://$cache"
path=$($nf add "$input" --name nixferry-demo --to "file://$cache" --secret-key-file "$work/demo-1.secret")
echo "$path"

narinfo="$cache/$(basename "$path" | cut -c1-32).narinfo"
echo "== narinfo show"
$nf narinfo show "$narinfo"

echo "== narinfo verify"
$nf narinfo verify "$narinfo" --trusted-key-file "$work/demo-1.public"

echo "== copy file://$cache -> file://$cache-zstd (signature checked on the way)"
$nf copy --from "file://$cache" --to "file://$cache-zstd?compression=zstd" \
    --trusted-key "$(cat "$work/demo-1.public")" "$path"
$nf path-info --json "file://$cache-zstd" "$path"
echo

echo "== nar dump | nar ls - (first lines)"
$nf nar dump "$input" | $nf nar ls - | head -n 8
