# The benchmark closure: about 1.1 GiB in 114 paths. 12 paths hold 85 MiB
# of real machine code each (slices of the system's shared libraries), 100
# paths hold many small text files, each referring to the previous one, one
# top path refers to them all, and every path refers to one small leaf,
# bench-leaf, whose content is the generation.
#
#   nix-build benches/closure.nix                       generation 1
#   nix-build benches/closure.nix --argstr generation 2 generation 2
#
# (`--arg generation 2` gives the same derivations.) Generation 2 is a mass
# rebuild: its leaf differs, so every path gets a new store path, but each
# path's contents differ from generation 1's only where they embed store
# paths. The big paths embed the leaf's path, as an RPATH would, in 60
# bytes every 4 MiB of lib.so (the file keeps its size); the small paths
# embed it in a file `leaf`, next to the previous small path in `prev`.
{ generation ? 1 }:
let
  mk = name: script: derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" ("export PATH=/usr/bin:/bin; " + script) ];
  };
  leaf = mk "bench-leaf" "mkdir $out; echo ${toString generation} > $out/generation";
  big = i: mk "bench-big-${toString i}" ''
    mkdir $out
    cat /usr/lib/x86_64-linux-gnu/*.so* /usr/bin/* 2>/dev/null | tail -c +${toString (i * 7000000 + 1)} | head -c 89128960 > $out/lib.so
    off=4096
    while [ $off -lt 89128960 ]; do
      { printf '%s/lib' ${leaf}; head -c 60 /dev/zero; } | head -c 60 | dd of=$out/lib.so bs=60 seek=$off oflag=seek_bytes conv=notrunc status=none
      off=$((off + 4194304))
    done
  '';
  small = i: prev: mk "bench-small-${toString i}" "mkdir -p $out/share; echo ${prev} > $out/prev; echo ${leaf} > $out/leaf; n=0; while [ $n -lt 150 ]; do seq $n $((n + 40 + ${toString i})) > $out/share/file-$n.txt; n=$((n+1)); done";
  smalls = builtins.foldl' (acc: i: acc ++ [ (small i (if acc == [] then "none" else builtins.elemAt acc (builtins.length acc - 1))) ]) [] (builtins.genList (x: x) 100);
  bigs = builtins.genList big 12;
in mk "bench-top" "mkdir $out; echo ${toString (bigs ++ smalls)} > $out/all"
