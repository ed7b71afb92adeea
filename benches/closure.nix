# The benchmark closure: about 1.1 GiB in 113 paths. 12 paths hold 85 MiB
# of real machine code each (slices of the system's shared libraries), 100
# paths hold many small text files, each referring to the previous one, and
# one top path refers to them all.
let
  mk = name: script: derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" ("export PATH=/usr/bin:/bin; " + script) ];
  };
  big = i: mk "bench-big-${toString i}" "mkdir $out; cat /usr/lib/x86_64-linux-gnu/*.so* /usr/bin/* 2>/dev/null | tail -c +${toString (i * 7000000 + 1)} | head -c 89128960 > $out/lib.so";
  small = i: prev: mk "bench-small-${toString i}" "mkdir -p $out/share; echo ${prev} > $out/prev; n=0; while [ $n -lt 150 ]; do seq $n $((n + 40 + ${toString i})) > $out/share/file-$n.txt; n=$((n+1)); done";
  smalls = builtins.foldl' (acc: i: acc ++ [ (small i (if acc == [] then "none" else builtins.elemAt acc (builtins.length acc - 1))) ]) [] (builtins.genList (x: x) 100);
  bigs = builtins.genList big 12;
in mk "bench-top" "mkdir $out; echo ${toString (bigs ++ smalls)} > $out/all"
