#!/usr/bin/env bash
# Benchmarks `nixferry serve` on 127.0.0.1, side by side in one run:
#
#   narinfo/s   `--store local` making and signing narinfos on the fly
#               (a narinfo signed in the last 2 s is served again as it is),
#               `--store file://` serving them as files, and nginx serving
#               the same files (wrk, 2 threads, 64 connections, 10 s each):
#               one narinfo again and again, then all of the closure's in
#               turn
#   NAR GB/s    downloading the closure's largest NAR uncompressed from
#               `--store local` (dumped on the fly) and from nginx, the
#               best of three downloads each
#   pull        copying the whole closure (benches/closure.nix) from
#               `nixferry serve --store file://` into a fresh file:// cache:
#               `nixferry copy --from http://…` (flushing its files, as by
#               default, and with fsync=false, as Nix) against
#               `nix copy --from http://…`
#
# Needs wrk and nginx (apt-get install wrk nginx-light); both ends share
# this machine's CPUs, so the load generator takes a share too.
set -euo pipefail
cd "$(dirname "$0")/.."
export NIX_CONFIG=$'experimental-features = nix-command\nsandbox = false\nbuild-users-group =\nsubstituters ='

# NIXFERRY_BIN times another build of nixferry (an older one, say) on the
# same data instead of this tree's.
if [ -z "${NIXFERRY_BIN:-}" ]; then cargo build --release --locked -q -p nixferry-cli; fi
nf=${NIXFERRY_BIN:-$PWD/target/release/nixferry}
top=$(nix-build --no-out-link benches/closure.nix)
work=$(mktemp -d /tmp/nixferry-serve-bench.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

"$nf" key generate bench-1 --secret-file "$work/key.secret" --public-file "$work/key.public"
pk=$(cat "$work/key.public")
"$nf" copy --to "file://$work/cache?compression=none&fsync=false" --secret-key-file "$work/key.secret" "$top" 2>/dev/null

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
serve() { # log store args...: starts a server (in this shell, so that
    # cleanup knows its pid)
    local log=$1; shift
    "$nf" serve --listen 127.0.0.1:0 "$@" > "$log" 2>&1 &
    pids+=($!)
}
url_of() { # log
    for _ in $(seq 100); do grep -q "listening on" "$1" 2>/dev/null && break; sleep 0.1; done
    grep -o 'http://[0-9.:]*' "$1" | head -1
}
serve "$work/local.log" --store local --secret-key-file "$work/key.secret"
serve "$work/file.log" --store "file://$work/cache"
local_url=$(url_of "$work/local.log")
file_url=$(url_of "$work/file.log")
nginx_port=$(port)
cat > "$work/nginx.conf" <<EOF
daemon off;
user $(id -un);
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    server {
        listen 127.0.0.1:$nginx_port;
        root $work/cache;
        types { text/x-nix-narinfo narinfo; application/x-nix-nar nar; }
    }
}
EOF
nginx -c "$work/nginx.conf" -p "$work" &
pids+=($!)
sleep 1
nginx_url=http://127.0.0.1:$nginx_port

hash=$(basename "$top" | cut -c1-32)
reqs() { # url: requests per second, all of them answered 200
    local out
    out=$(wrk -t2 -c64 -d10s "$1")
    if grep -q "Non-2xx" <<<"$out"; then echo "$1: not all answers were 200" >&2; exit 1; fi
    awk '/Requests\/sec/ {print $2}' <<<"$out"
}
l=$(reqs "$local_url/$hash.narinfo")
f=$(reqs "$file_url/$hash.narinfo")
n=$(reqs "$nginx_url/$hash.narinfo")
printf 'narinfo/s   local+signing %8.0f   file %8.0f   nginx %8.0f   local/nginx %.2f   file/nginx %.2f\n' \
    "$l" "$f" "$n" "$(awk "BEGIN{print $l / $n}")" "$(awk "BEGIN{print $f / $n}")"

# All the closure's narinfos in turn, as a client substituting it asks.
{
    printf 'paths = {'
    for p in $(nix-store -qR "$top"); do printf '"/%s.narinfo",' "$(basename "$p" | cut -c1-32)"; done
    printf '}\ni = 0\nrequest = function()\n  i = i + 1\n  return wrk.format("GET", paths[(i %% #paths) + 1])\nend\n'
} > "$work/rotate.lua"
rot() { wrk -t2 -c64 -d10s -s "$work/rotate.lua" "$1" | awk '/Requests\/sec/ {print $2}'; }
l=$(rot "$local_url"); f=$(rot "$file_url"); n=$(rot "$nginx_url")
printf 'narinfo/s, all %s paths in turn: local+signing %8.0f   file %8.0f   nginx %8.0f   local/nginx %.2f   file/nginx %.2f\n' \
    "$(nix-store -qR "$top" | wc -l)" "$l" "$f" "$n" "$(awk "BEGIN{print $l / $n}")" "$(awk "BEGIN{print $f / $n}")"

# The largest NAR, by its URL in each server's narinfo.
big=$(nix path-info --json -r "$top" | python3 -c 'import json,sys; print(max(json.load(sys.stdin), key=lambda i: i["narSize"])["path"])')
bighash=$(basename "$big" | cut -c1-32)
gbps() { # url of a narinfo: the best of three downloads (the first one
    # also pays for reading the files from disk)
    local narurl
    narurl=$(curl -s "$1" | awk '/^URL:/ {print $2}')
    for _ in 1 2 3; do
        curl -s -o /dev/null -w '%{size_download} %{time_total}\n' "$(dirname "$1")/$narurl"
    done | awk '{r = $1 / $2 / 1e9; if (r > best) best = r} END {printf "%.2f", best}'
}
printf 'NAR GB/s    local (dumped on the fly) %s   nginx %s\n' \
    "$(gbps "$local_url/$bighash.narinfo")" "$(gbps "$nginx_url/$bighash.narinfo")"

# nixferry flushes what it writes by default; Nix never does, so the
# second run (fsync=false) is the like-for-like one.
now() { date +%s.%N; }
sync
t0=$(now)
"$nf" copy --from "$file_url" --to "file://$work/pull-nf?compression=none" --trusted-key "$pk" "$top" 2>/dev/null
t1=$(now)
sync
t2=$(now)
"$nf" copy --from "$file_url" --to "file://$work/pull-nfns?compression=none&fsync=false" --trusted-key "$pk" "$top" 2>/dev/null
t3=$(now)
sync
t4=$(now)
nix copy --from "$file_url" --to "file://$work/pull-nix?compression=none" \
    --option trusted-public-keys "$pk" "$top" 2>/dev/null
t5=$(now)
awk "BEGIN{printf \"pull        nixferry %.2f s   nixferry fsync=false %.2f s   nix %.2f s   speedup %.2fx   without flushing %.2fx\n\", $t1 - $t0, $t3 - $t2, $t5 - $t4, ($t5 - $t4) / ($t1 - $t0), ($t5 - $t4) / ($t3 - $t2)}"
