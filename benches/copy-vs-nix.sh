#!/usr/bin/env bash
# Times `nixferry copy` and `nix copy` side by side, in one run, copying the
# same closure from the local store into fresh file:// caches, for each
# compression, and reports ratios, compressed sizes and nixferry's peak RSS.
#
#   benches/copy-vs-nix.sh [compressions...]     (default: none zstd xz)
#
# The closure (built once with Nix, about 1.1 GiB in 112 paths): 12 paths
# holding 85 MiB of real machine code each (slices of the system's shared
# libraries), and 100 paths of many small text files, each referring to the
# previous one, all referred to by one top path.
set -euo pipefail
cd "$(dirname "$0")/.."
export NIX_CONFIG=$'experimental-features = nix-command\nsandbox = false\nbuild-users-group =\nsubstituters ='
compressions=${*:-none zstd xz}

cargo build --release --locked -q -p nixferry-cli
nf=$PWD/target/release/nixferry
work=${NIXFERRY_BENCH_DIR:-$PWD/target/bench-copy}
mkdir -p "$work"

cat > "$work/closure.nix" <<'NIX'
let
  mk = name: script: derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" ("export PATH=/usr/bin:/bin; " + script) ];
  };
  big = i: mk "bench-big-${toString i}" "mkdir $out; cat /usr/lib/x86_64-linux-gnu/*.so* /usr/bin/* 2>/dev/null | tail -c +${toString (i * 7000000 + 1)} | head -c 89128960 > $out/lib.so";
  small = i: prev: mk "bench-small-${toString i}" "mkdir -p $out/share; echo ${prev} > $out/prev; n=0; while [ $n -lt 150 ]; do seq $n $((n + 40 + ${toString i})) > $out/share/file-$n.txt; n=$((n+1)); done";
  smalls = builtins.foldl' (acc: i: acc ++ [ (small i (if acc == [] then "none" else builtins.elemAt acc (builtins.length acc - 1))) ]) [] (builtins.genList (x: x) 100);
  bigs = builtins.genList big 12;
in mk "bench-top" "mkdir $out; echo ${toString (bigs ++ smalls)} > $out/all"
NIX
top=$(nix-build --no-out-link "$work/closure.nix")
paths=$(nix-store -qR "$top" | wc -l)
size=$(nix path-info -S "$top" | awk '{print $2}')
echo "closure: $top ($paths paths, $((size / 1048576)) MiB)"

now() { date +%s.%N; }
printf '%-8s %12s %12s %9s %14s %14s %12s\n' compr nixferry-s nix-s speedup nixferry-MiB nix-MiB peak-RSS-MB
for c in $compressions; do
    rm -rf "$work/nf-$c" "$work/nix-$c"
    t0=$(now)
    /usr/bin/time -f '%M' -o "$work/rss" "$nf" copy --to "file://$work/nf-$c?compression=$c&parallel-compression=true" "$top" >/dev/null 2>&1
    t1=$(now)
    nix copy --to "file://$work/nix-$c?compression=$c" "$top"
    t2=$(now)
    ours=$(awk "BEGIN{print $t1 - $t0}")
    theirs=$(awk "BEGIN{print $t2 - $t1}")
    printf '%-8s %12.2f %12.2f %8.2fx %14d %14d %12d\n' "$c" "$ours" "$theirs" \
        "$(awk "BEGIN{print $theirs / $ours}")" \
        "$(( $(du -sb "$work/nf-$c/nar" | cut -f1) / 1048576 ))" \
        "$(( $(du -sb "$work/nix-$c/nar" | cut -f1) / 1048576 ))" \
        "$(( $(cat "$work/rss") / 1024 ))"
done
