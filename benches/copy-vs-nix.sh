#!/usr/bin/env bash
# Times `nixferry copy` and `nix copy` side by side, in one run, copying the
# same closure from the local store into fresh file:// caches, for each
# compression, and reports ratios, compressed sizes and peak RSS of both.
#
#   benches/copy-vs-nix.sh [compressions...]     (default: default none zstd xz)
#
# `default` gives neither tool a compression: each writes what a user gets
# without asking (nixferry: zstd; Nix: xz). The others set `compression=`
# on both (and nixferry's `parallel-compression=true`).
#
# The closure (built once with Nix, about 1.1 GiB in 112 paths): 12 paths
# holding 85 MiB of real machine code each (slices of the system's shared
# libraries), and 100 paths of many small text files, each referring to the
# previous one, all referred to by one top path.
set -euo pipefail
cd "$(dirname "$0")/.."
export NIX_CONFIG=$'experimental-features = nix-command\nsandbox = false\nbuild-users-group =\nsubstituters ='
compressions=${*:-default none zstd xz}

# NIXFERRY_BIN times another build of nixferry (an older one, say) on the
# same data instead of this tree's.
if [ -z "${NIXFERRY_BIN:-}" ]; then cargo build --release --locked -q -p nixferry-cli; fi
nf=${NIXFERRY_BIN:-$PWD/target/release/nixferry}

work=${NIXFERRY_BENCH_DIR:-$PWD/target/bench-copy}
mkdir -p "$work"

top=$(nix-build --no-out-link benches/closure.nix)
paths=$(nix-store -qR "$top" | wc -l)
size=$(nix path-info -S "$top" | awk '{print $2}')
echo "closure: $top ($paths paths, $((size / 1048576)) MiB)"

now() { date +%s.%N; }
secs() { awk "BEGIN{printf \"%.2f\", $2 - $1}"; }
ratio() { awk "BEGIN{printf \"%.2fx\", $1 / $2}"; }
mib() { echo $(( $(du -sb "$1/nar" | cut -f1) / 1048576 )); }
rss() { echo $(( $(cat "$work/rss") / 1024 )); }

# Three runs per compression, each after `sync` so that no run pays for
# the previous one's writes:
#   nixferry          the default: every file flushed to disk (fsync) before
#                     its narinfo is written;
#   nixferry-nosync   with ?fsync=false, which is what Nix does;
#   nix copy          and, separately, the `sync` that makes its cache
#                     durable, so both sides of each comparison promise the
#                     same.
printf '%-6s | %9s %9s %9s %9s | %9s %9s %9s | %8s %8s | %6s %6s %6s\n' \
    compr nf nf-nosync nix nix+sync \
    'vs-nix' 'vs-nix+s' 'nosync' nf-MiB nix-MiB RSS-nf RSS-ns RSS-nx
# The query of a cache URL for compression $1: none for `default`.
query() { if [ "$1" = default ]; then echo "$2"; else echo "?compression=$1$3${2:+&${2#\?}}"; fi; }
for c in $compressions; do
    nf_q=$(query "$c" "" "&parallel-compression=true")
    ns_q=$(query "$c" "?fsync=false" "&parallel-compression=true")
    nix_q=$(query "$c" "" "")
    rm -rf "$work/nf-$c" "$work/nfns-$c" "$work/nix-$c"
    sync
    t0=$(now)
    /usr/bin/time -f '%M' -o "$work/rss" "$nf" copy --to "file://$work/nf-$c$nf_q" "$top" >/dev/null 2>&1
    t1=$(now); rss_nf=$(rss)
    sync
    t2=$(now)
    /usr/bin/time -f '%M' -o "$work/rss" "$nf" copy --to "file://$work/nfns-$c$ns_q" "$top" >/dev/null 2>&1
    t3=$(now); rss_ns=$(rss)
    sync
    t4=$(now)
    /usr/bin/time -f '%M' -o "$work/rss" nix copy --to "file://$work/nix-$c$nix_q" "$top" 2>/dev/null
    t5=$(now); rss_nix=$(rss)
    sync
    t6=$(now)
    ours=$(secs "$t0" "$t1"); nosync=$(secs "$t2" "$t3")
    theirs=$(secs "$t4" "$t5"); theirs_sync=$(secs "$t4" "$t6")
    printf '%-6s | %9s %9s %9s %9s | %9s %9s %9s | %8d %8d | %6d %6d %6d\n' \
        "$c" "$ours" "$nosync" "$theirs" "$theirs_sync" \
        "$(ratio "$theirs" "$ours")" "$(ratio "$theirs_sync" "$ours")" "$(ratio "$theirs" "$nosync")" \
        "$(mib "$work/nf-$c")" "$(mib "$work/nix-$c")" "$rss_nf" "$rss_ns" "$rss_nix"
done
echo "vs-nix: nix / nf; vs-nix+s: (nix + sync) / nf; nosync: nix / nf-nosync (both without flushing). Times in seconds, RSS in MB."
