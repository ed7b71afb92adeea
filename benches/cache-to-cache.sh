#!/usr/bin/env bash
# Times a copy between two file:// caches of the same compression, side by
# side in one run, on the same data:
#
#   nixferry         `nixferry copy` at its defaults: the NAR files move as
#                    they are, and each is decompressed and decoded on a
#                    second thread while it is copied, its NAR checked
#                    against the signed NarHash/NarSize; files are flushed
#                    to disk (fsync) before their narinfo is written;
#   nixferry-nosync  the same with ?fsync=false, which is what Nix does;
#   nix copy         `nix copy --from file:// --to file://`, which
#                    decompresses, checks and compresses every NAR again;
#   cp               `cp -r` of the cache directory: bytes copied, nothing
#                    checked, nothing flushed (the floor).
#
#   benches/cache-to-cache.sh [compressions...]     (default: zstd xz)
#
# The closure is benches/closure.nix (about 1.1 GiB in 114 paths), put
# signed into a source cache of each compression first. Three rounds;
# each time is taken after `sync`, so no run pays for the previous one's
# writes. Reports the times and the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
compressions=${*:-zstd xz}

# NIXFERRY_BIN times another build of nixferry (an older one, say) on the
# same data instead of this tree's.
if [ -z "${NIXFERRY_BIN:-}" ]; then cargo build --release --locked -q -p nixferry-cli; fi
nf=${NIXFERRY_BIN:-$PWD/target/release/nixferry}

work=${NIXFERRY_BENCH_DIR:-$PWD/target/bench-cache-to-cache}
mkdir -p "$work"

export NIX_CONFIG=$'experimental-features = nix-command\nsandbox = false\nbuild-users-group =\nsubstituters ='
top=$(nix-build --no-out-link benches/closure.nix)
echo "closure: $top ($(nix-store -qR "$top" | wc -l) paths, $(( $(nix path-info -S "$top" | awk '{print $2}') / 1048576 )) MiB)"

if [ ! -f "$work/key.secret" ]; then
    "$nf" key generate bench-1 --secret-file "$work/key.secret" --public-file "$work/key.public"
fi
pk=$(cat "$work/key.public")
# Nix checks the same signatures.
export NIX_CONFIG=$"$NIX_CONFIG"$'\n'"trusted-public-keys = $pk"

now() { date +%s.%N; }
secs() { awk "BEGIN{printf \"%.2f\", $2 - $1}"; }
ratio() { awk "BEGIN{printf \"%.2fx\", $1 / $2}"; }
timed() {
    sync
    local t0 t1
    t0=$(now)
    "$@" >/dev/null 2>"$work/stderr" || { cat "$work/stderr" >&2; exit 1; }
    t1=$(now)
    secs "$t0" "$t1"
}

printf '%-5s %-5s | %8s %8s %8s %8s | %12s %12s %10s\n' \
    compr round nf nf-nosync nix cp 'nix/nf' 'nix/nosync' 'nosync/cp'
for c in $compressions; do
    src="$work/src-$c"
    if [ ! -f "$src/nix-cache-info" ]; then
        "$nf" copy --to "file://$src?compression=$c&parallel-compression=true" \
            --secret-key-file "$work/key.secret" "$top" >/dev/null 2>&1
    fi
    for round in 1 2 3; do
        rm -rf "$work/dst-"*
        a=$(timed "$nf" copy --from "file://$src" --to "file://$work/dst-nf?compression=$c" --trusted-key "$pk" "$top")
        b=$(timed "$nf" copy --from "file://$src" --to "file://$work/dst-ns?compression=$c&fsync=false" --trusted-key "$pk" "$top")
        n=$(timed nix copy --from "file://$src" --to "file://$work/dst-nix?compression=$c" "$top")
        p=$(timed cp -r "$src" "$work/dst-cp")
        printf '%-5s %-5s | %8s %8s %8s %8s | %12s %12s %10s\n' \
            "$c" "$round" "$a" "$b" "$n" "$p" \
            "$(ratio "$n" "$a")" "$(ratio "$n" "$b")" "$(ratio "$b" "$p")"
    done
done
rm -rf "$work/dst-"*
