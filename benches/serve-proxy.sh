#!/usr/bin/env bash
# Benchmarks `nixferry serve --upstream` on 127.0.0.1: pulling the whole
# benchmark closure (benches/closure.nix) into a fresh file:// cache
#
#   direct      from `nixferry serve --store file://CACHE`
#   proxy       from `nixferry serve --store file://EMPTY --upstream DIRECT`,
#               which looks every path up upstream, checks its signature,
#               and streams its NAR file through while hashing it
#
# with `nixferry copy --from` and `nix copy --from`, and prints the ratio
# of the times (direct / proxy: 1.0 means the proxy costs nothing; the
# target is at least 0.8). All three processes share this machine's CPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
export NIX_CONFIG=$'experimental-features = nix-command\nsandbox = false\nbuild-users-group =\nsubstituters =\nnarinfo-cache-positive-ttl = 0\nnarinfo-cache-negative-ttl = 0'

# NIXFERRY_BIN times another build of nixferry on the same data.
if [ -z "${NIXFERRY_BIN:-}" ]; then cargo build --release --locked -q -p nixferry-cli; fi
nf=${NIXFERRY_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/nixferry}
top=$(nix-build --no-out-link benches/closure.nix)
work=$(mktemp -d /tmp/nixferry-proxy-bench.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

"$nf" key generate bench-1 --secret-file "$work/key.secret" --public-file "$work/key.public"
pk=$(cat "$work/key.public")
# COMPRESSION=zstd (say) benchmarks compressed NAR files passed through.
compression=${COMPRESSION:-none}
"$nf" copy --to "file://$work/cache?compression=$compression&fsync=false" \
    --secret-key-file "$work/key.secret" "$top" 2>/dev/null

serve() { # log args...: starts a server in this shell, so cleanup knows it
    local log=$1; shift
    "$nf" serve --listen 127.0.0.1:0 "$@" > "$log" 2>&1 &
    pids+=($!)
}
url_of() { # log
    for _ in $(seq 100); do grep -q "listening on" "$1" 2>/dev/null && break; sleep 0.1; done
    grep -o 'http://[0-9.:]*' "$1" | head -1
}
serve "$work/direct.log" --store "file://$work/cache"
direct=$(url_of "$work/direct.log")
serve "$work/proxy.log" --store "file://$work/empty" --upstream "$direct" --trusted-key "$pk"
proxy=$(url_of "$work/proxy.log")

now() { date +%s.%N; }
pull() { # tool url dest: seconds to pull the closure
    local t0 t1
    sync
    t0=$(now)
    case $1 in
        nixferry) "$nf" copy --from "$2" --to "file://$3?compression=none&fsync=false" \
            --trusted-key "$pk" "$top" 2>/dev/null ;;
        nix) nix copy --from "$2" --to "file://$3?compression=none" \
            --option trusted-public-keys "$pk" "$top" 2>/dev/null ;;
    esac
    t1=$(now)
    rm -rf "$3"
    awk "BEGIN{print $t1 - $t0}"
}
for tool in nixferry nix; do
    d=$(pull "$tool" "$direct" "$work/pull-direct")
    p=$(pull "$tool" "$proxy" "$work/pull-proxy")
    awk "BEGIN{printf \"pull ($compression) with %-8s direct %.2f s   through the proxy %.2f s   direct/proxy %.2f\n\", \"$tool\", $d, $p, $d / $p}"
done
