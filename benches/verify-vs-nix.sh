#!/usr/bin/env bash
# Times `nixferry cache verify` and `nix store verify` side by side on the
# same signed file:// cache of the benchmark closure, for each compression,
# and reports median times, the ratio and peak RSS of both; then damages a
# copy of each cache in three known ways and shows which paths each tool
# flags, and whether they agree.
#
#   benches/verify-vs-nix.sh [compressions...]     (default: xz zstd none)
#
# xz is the default compression of file:// caches, nixferry's as Nix's.
# The closure (benches/closure.nix, built once with Nix, about 1.1 GiB in
# 114 paths) is copied into each cache with `nixferry copy`, signed with a
# key made for the run. Then, NIXFERRY_BENCH_RUNS times (default 3),
# alternating which goes first, each after `sync`:
#
#   nixferry cache verify file://DIR --trusted-key PUB
#   nix store verify --store file://DIR -r TOP --option trusted-public-keys PUB
#
# (Nix 2.8 cannot list a binary cache: it checks the closure of the top
# path, which is the whole cache.) They do not check the same things: Nix
# decompresses each NAR file and hashes it against NarHash, and checks the
# signatures; nixferry also checks each file's FileSize and FileHash,
# decodes every NAR strictly, and checks references, listings and files no
# narinfo names. Both read the caches from the page cache (the copy has just
# written them); with NIXFERRY_BENCH_DROP_CACHES=1, and the right to write
# /proc/sys/vm/drop_caches, every run starts with cold caches instead.
#
# The damage, on a copy of each cache: one path's NAR file deleted, the
# largest path's NAR file cut to half its size, and a third path's
# signature altered (one base-64 character). nixferry reports problems by
# path in one run (--json); for Nix, each path of the closure is verified
# on its own and counted as flagged when the command fails.
#
# NIXFERRY_BENCH_REUSE=1 keeps the key and the caches of an earlier run
# (an xz copy of the closure takes minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
export NIX_CONFIG=$'experimental-features = nix-command\nsandbox = false\nbuild-users-group =\nsubstituters ='
compressions=${*:-xz zstd none}
runs=${NIXFERRY_BENCH_RUNS:-3}

# NIXFERRY_BIN times another build of nixferry (an older one, say) on the
# same data instead of this tree's.
if [ -z "${NIXFERRY_BIN:-}" ]; then cargo build --release --locked -q -p nixferry-cli; fi
nf=${NIXFERRY_BIN:-$PWD/target/release/nixferry}

work=${NIXFERRY_BENCH_DIR:-$PWD/target/bench-verify}
mkdir -p "$work"

top=$(nix-build --no-out-link benches/closure.nix)
closure=$(nix-store -qR "$top" | sort)
paths=$(echo "$closure" | wc -l)
size=$(nix path-info -S "$top" | awk '{print $2}')
echo "closure: $top ($paths paths, $((size / 1048576)) MiB)"

if [ "${NIXFERRY_BENCH_REUSE:-}" != 1 ] || [ ! -s "$work/key.pub" ]; then
    rm -rf "$work"/cache-* "$work"/key.*
    "$nf" key generate verify-bench-1 --secret-file "$work/key.sec" --public-file "$work/key.pub" >/dev/null
fi
pub=$(cat "$work/key.pub")

now() { date +%s.%N; }
secs() { awk "BEGIN{printf \"%.2f\", $2 - $1}"; }
ratio() { awk "BEGIN{printf \"%.2fx\", $1 / $2}"; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
max() { printf '%s\n' "$@" | sort -g | tail -n 1; }
settle() {
    sync
    if [ "${NIXFERRY_BENCH_DROP_CACHES:-}" = 1 ]; then echo 3 >/proc/sys/vm/drop_caches; fi
}

# timed NAME CMD...: runs CMD after settle(), its output in $work/NAME.log;
# prints "seconds RSS-MB". Failing is an error: only clean caches are timed.
timed() {
    local name=$1 t0 t1
    shift
    settle
    t0=$(now)
    if ! /usr/bin/time -f '%M' -o "$work/rss" "$@" >"$work/$name.log" 2>&1; then
        echo "verify-vs-nix: '$*' failed on a clean cache:" >&2
        tail -n 5 "$work/$name.log" >&2
        exit 1
    fi
    t1=$(now)
    echo "$(secs "$t0" "$t1") $(($(tail -n 1 "$work/rss") / 1024))"
}

# The two commands, as the runs below time them, on the cache in directory
# $1, with more arguments.
nf_verify() { "$nf" cache verify "file://$1" --trusted-key "$pub" "${@:2}"; }
nix_verify() { nix store verify --store "file://$1" --option trusted-public-keys "$pub" "${@:2}"; }

hash_of() { basename "$1" | cut -c1-32; }
field() { sed -n "s/^$2: //p" "$1"; }

# damage COMPRESSION: the findings of both tools on a damaged copy of the
# cache; prints the verdict for the summary ("agree" or "DIFFER") last.
damage() {
    local c=$1 d=$work/damaged-$c
    rm -rf "$d"
    cp -a "$work/cache-$c" "$d"
    local big deleted resigned
    big=$(for p in $closure; do
        echo "$(field "$d/$(hash_of "$p").narinfo" NarSize) $p"
    done | sort -n | tail -n 1 | cut -d' ' -f2)
    local others=()
    mapfile -t others < <(echo "$closure" | grep -vxF "$big")
    deleted=${others[1]}
    resigned=${others[2]}
    local file
    file=$d/$(field "$d/$(hash_of "$deleted").narinfo" URL)
    rm "$file"
    file=$d/$(field "$d/$(hash_of "$big").narinfo" URL)
    truncate -s $(($(stat -c %s "$file") / 2)) "$file"
    local narinfo=$d/$(hash_of "$resigned").narinfo sig b64 swap
    sig=$(field "$narinfo" Sig | head -n 1)
    b64=${sig#*:}
    if [ "${b64:10:1}" = A ]; then swap=B; else swap=A; fi
    sed -i "s|^Sig: ${sig%%:*}:.*|Sig: ${sig%%:*}:${b64:0:10}$swap${b64:11}|" "$narinfo"
    {
        echo "damaged copy of the $c cache:"
        echo "  NAR file deleted:     $deleted"
        echo "  NAR file cut in half: $big"
        echo "  signature altered:    $resigned"
    } >&2

    local rc=0
    nf_verify "$d" --json >"$work/findings-nf-$c.json" 2>/dev/null || rc=$?
    [ "$rc" = 1 ] || { echo "verify-vs-nix: nixferry cache verify exited $rc (1 expected)" >&2; exit 1; }
    python3 - "$work/findings-nf-$c.json" >"$work/findings-nf-$c" <<'EOF'
import json, sys
kinds = {}
for p in json.load(open(sys.argv[1]))["problems"]:
    if p["path"]:
        kinds.setdefault(p["path"], []).append(p["kind"])
for path in sorted(kinds):
    print(path, ",".join(kinds[path]))
EOF
    : >"$work/findings-nix-$c"
    for p in $closure; do
        if ! nix_verify "$d" "$p" >/dev/null 2>"$work/nix-one.err"; then
            echo "$p $(grep -v '^checking' "$work/nix-one.err" | head -n 1)" >>"$work/findings-nix-$c"
        fi
    done
    rc=0
    nix_verify "$d" -r "$top" >/dev/null 2>"$work/findings-nix-r-$c" || rc=$?
    {
        echo "  nixferry cache verify flags:"
        sed 's/^/    /' "$work/findings-nf-$c"
        echo "  nix store verify (path by path) flags:"
        sed 's/^/    /' "$work/findings-nix-$c"
        echo "  nix store verify -r TOP: exit $rc (1: corrupted, 2: untrusted, 4: other errors, summed)"
    } >&2
    local expected ours theirs
    expected=$(printf '%s\n' "$deleted" "$big" "$resigned" | sort)
    ours=$(cut -d' ' -f1 "$work/findings-nf-$c" | sort)
    theirs=$(cut -d' ' -f1 "$work/findings-nix-$c" | sort)
    if [ "$ours" = "$theirs" ] && [ "$ours" = "$expected" ]; then
        echo "  same paths flagged: yes, the 3 damaged ones" >&2
        echo agree
    else
        echo "  same paths flagged: NO (expected, nixferry, nix):" >&2
        diff <(echo "$expected") <(echo "$ours") | sed 's/^/    nixferry /' >&2 || true
        diff <(echo "$expected") <(echo "$theirs") | sed 's/^/    nix /' >&2 || true
        echo DIFFER
    fi
    rm -rf "$d"
}

rows=()
for c in $compressions; do
    cache=$work/cache-$c
    if [ "${NIXFERRY_BENCH_REUSE:-}" = 1 ] && [ "$(cat "$cache.done" 2>/dev/null)" = "$pub" ]; then
        echo "$c: reusing $cache"
    else
        rm -rf "$cache" "$cache.done"
        settle
        t0=$(now)
        "$nf" copy --to "file://$cache?compression=$c&parallel-compression=true" \
            --secret-key-file "$work/key.sec" "$top" >/dev/null 2>&1
        t1=$(now)
        echo "$pub" >"$cache.done"
        echo "$c: copied into $cache in $(secs "$t0" "$t1") s"
    fi
    mib=$(($(du -sb "$cache/nar" | cut -f1) / 1048576))
    nf_t=() nix_t=() nf_m=() nix_m=()
    for i in $(seq "$runs"); do
        order="nf nix"
        if [ $((i % 2)) = 0 ]; then order="nix nf"; fi
        for who in $order; do
            if [ "$who" = nf ]; then
                got=$(timed "nf-$c" "$nf" cache verify "file://$cache" --trusted-key "$pub")
                read -r t m <<<"$got"
                nf_t+=("$t") nf_m+=("$m")
            else
                got=$(timed "nix-$c" nix store verify --store "file://$cache" --option trusted-public-keys "$pub" -r "$top")
                read -r t m <<<"$got"
                nix_t+=("$t") nix_m+=("$m")
            fi
        done
        echo "$c: run $i: nixferry ${nf_t[-1]} s (${nf_m[-1]} MB), nix ${nix_t[-1]} s (${nix_m[-1]} MB)"
    done
    ours=$(median "${nf_t[@]}")
    theirs=$(median "${nix_t[@]}")
    verdict=$(damage "$c")
    rows+=("$(printf '%-6s | %7d | %8s %8s | %7s | %6d %6d | %s' "$c" "$mib" "$ours" "$theirs" \
        "$(ratio "$theirs" "$ours")" "$(max "${nf_m[@]}")" "$(max "${nix_m[@]}")" "$verdict")")
done

echo
printf '%-6s | %7s | %8s %8s | %7s | %6s %6s | %s\n' \
    compr NAR-MiB nf nix nix/nf RSS-nf RSS-nx 'damaged: same paths'
printf '%s\n' "${rows[@]}"
echo "nf, nix: median seconds of $runs runs; nix/nf: how many times faster nixferry is; RSS: peak, MB."
