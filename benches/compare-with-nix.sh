#!/usr/bin/env bash
# Times nixferry and Nix side by side on the same generated trees, in one run,
# interleaving the two so machine noise hits both alike, and prints ratios.
#
#   benches/compare-with-nix.sh [ROUNDS]
#
# Trees: "large" (4 x 256 MiB of incompressible data) and "small" (20,000
# files of 0-4 KiB in 400 directories). Cases: NAR encode to /dev/null
# (`nix-store --dump`), NAR hash (`nix hash path`), and NAR hash of the
# large tree on one core (taskset), the physical limit being sha256 speed.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
export NIX_CONFIG=$'experimental-features = nix-command\nsandbox = false\nbuild-users-group ='

cargo build --release --locked -q -p nixferry-cli -p nixferry-benches
nf=$PWD/target/release/nixferry
data=${NIXFERRY_BENCH_DIR:-$PWD/target/bench-data}
mkdir -p "$data"

if [ ! -d "$data/large" ] || [ ! -d "$data/small" ]; then
    echo "generating trees in $data" >&2
    rm -rf "$data/large" "$data/small"
    cargo run --release --locked -q -p nixferry-benches --bin gen-trees -- "$data"
fi

# Best wall time in seconds of `rounds` runs of a command.
best() {
    local best=""
    for _ in $(seq "$rounds"); do
        local t0 t1 dt
        t0=$(date +%s.%N)
        "$@" >/dev/null
        t1=$(date +%s.%N)
        dt=$(awk "BEGIN{print $t1 - $t0}")
        if [ -z "$best" ] || awk "BEGIN{exit !($dt < $best)}"; then best=$dt; fi
    done
    echo "$best"
}

size_of() { $nf nar dump "$1" | wc -c; }

printf '%-26s %11s %11s %9s %14s\n' case nixferry-s nix-s speedup nixferry-MB/s
# row NAME BYTES NIXFERRY-COMMAND NIX-COMMAND
row() {
    local ours theirs
    ours=$(best bash -c "$3")
    theirs=$(best bash -c "$4")
    printf '%-26s %11.3f %11.3f %8.2fx %14.0f\n' "$1" "$ours" "$theirs" \
        "$(awk "BEGIN{print $theirs / $ours}")" "$(awk "BEGIN{print $2 / $ours / 1000000}")"
}

L=$data/large S=$data/small
large=$(size_of "$L")
small=$(size_of "$S")
row "dump large (4x256MiB)" "$large" "$nf nar dump $L" "nix-store --dump $L"
row "dump small (20k files)" "$small" "$nf nar dump $S" "nix-store --dump $S"
row "hash large" "$large" "$nf nar hash $L" "nix hash path $L"
row "hash small" "$small" "$nf nar hash $S" "nix hash path $S"
row "hash large, one core" "$large" "taskset -c 0 $nf nar hash $L" "taskset -c 0 nix hash path $L"
