# One path of 200 MiB, a single file of real machine code (a slice of the
# system's shared libraries and programs, further on than the slices in
# benches/closure.nix), so that compression cannot make it small. For the
# resume case of benches/slow-link.sh:
#
#   nix-build benches/big-nar.nix
let
  mk = name: script: derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" ("export PATH=/usr/bin:/bin; " + script) ];
  };
in mk "bench-big-nar" "cat /usr/lib/x86_64-linux-gnu/*.so* /usr/bin/* 2>/dev/null | tail -c +300000001 | head -c 209715200 > $out"
