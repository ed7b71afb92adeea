#!/usr/bin/env bash
# Times `nixferry copy` of the same closure from the local store into a
# fresh file:// cache and into fresh buckets of local S3 servers, in one
# run, for each compression, and reports the speed of each S3 copy as a
# share of the file:// copy's, peak RSS, and the time to pull the bucket
# back into a file:// cache.
#
#   benches/s3-vs-file.sh [compressions...]      (default: none zstd)
#
# Two S3 servers on 127.0.0.1, started and stopped by this script:
#   moto     from PyPI, the server the tests use (Python: its own CPU time,
#            about 17 s per GiB stored here, bounds its figures);
#   s3s-fs   from crates.io (a Rust S3 server storing objects as files),
#            installed under target/bench-tools on first use.
# The closure is benches/closure.nix (about 1 GiB, 114 paths).
set -euo pipefail
cd "$(dirname "$0")/.."
export NIX_CONFIG=$'experimental-features = nix-command\nsandbox = false\nbuild-users-group =\nsubstituters ='
compressions=${*:-none zstd}

cargo build --release --locked -q -p nixferry-cli
nf=$PWD/target/release/nixferry
work=${NIXFERRY_BENCH_DIR:-$PWD/target/bench-s3}
rm -rf "$work"
mkdir -p "$work/moto" "$work/s3s"
python=${NIXFERRY_TEST_PYTHON:-$PWD/target/py-venv/bin/python}
if ! "$python" -c 'import moto.server' 2>/dev/null; then
    python3 -m venv target/py-venv
    target/py-venv/bin/pip install --quiet 'moto[server]==5.2.5'
    python=$PWD/target/py-venv/bin/python
fi
s3s=$PWD/target/bench-tools/bin/s3s-fs
if [ ! -x "$s3s" ]; then
    cargo install --quiet --locked s3s-fs@0.14.1 --features binary --root target/bench-tools
fi

top=$(nix-build --no-out-link benches/closure.nix)
paths=$(nix-store -qR "$top" | wc -l)
size=$(nix path-info -S "$top" | awk '{print $2}')
echo "closure: $top ($paths paths, $((size / 1048576)) MiB)"

# The servers, in this shell, so that the trap stops them.
harness=crates/cli/tests/it/s3_server.py
args=(serve --port-file "$work/port" --creds-file "$work/creds" --tmp-dir "$work/moto")
for c in $compressions; do
    args+=(--bucket "bench-$c")
    mkdir -p "$work/s3s/bench-$c"
done
"$python" "$harness" "${args[@]}" &
moto=$!
s3s_port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$s3s" --host 127.0.0.1 --port "$s3s_port" --access-key bench --secret-key bench-secret "$work/s3s" >/dev/null 2>&1 &
s3s_pid=$!
trap 'kill "$moto" "$s3s_pid" 2>/dev/null || true' EXIT
for _ in $(seq 600); do [ -s "$work/port" ] && break; sleep 0.1; done
moto_port=$(cat "$work/port")
moto_key=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["access_key_id"])' "$work/creds")
moto_secret=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["secret_access_key"])' "$work/creds")

now() { date +%s.%N; }
secs() { awk "BEGIN{printf \"%.2f\", $2 - $1}"; }
ratio() { awk "BEGIN{printf \"%.0f%%\", 100 * $1 / $2}"; }
rss() { echo $(( $(cat "$work/rss") / 1024 )); }

# to_s3 SERVER COMPRESSION: copies into the server's bucket; prints the
# seconds, the RSS and the seconds of the pull back.
to_s3() {
    local port key secret
    case $1 in
        moto) port=$moto_port key=$moto_key secret=$moto_secret ;;
        s3s-fs) port=$s3s_port key=bench secret=bench-secret ;;
    esac
    local url="s3://bench-$2?endpoint=127.0.0.1:$port&scheme=http"
    sync
    local t0 t1 t2 t3
    t0=$(now)
    AWS_ACCESS_KEY_ID=$key AWS_SECRET_ACCESS_KEY=$secret /usr/bin/time -f '%M' -o "$work/rss" \
        "$nf" copy --to "$url&compression=$2&parallel-compression=true" "$top" >/dev/null 2>&1
    t1=$(now)
    local rss_s3; rss_s3=$(rss)
    t2=$(now)
    AWS_ACCESS_KEY_ID=$key AWS_SECRET_ACCESS_KEY=$secret \
        "$nf" copy --no-check-sigs --from "$url" --to "file://$work/back-$1-$2?compression=$2&fsync=false" "$top" >/dev/null 2>&1
    t3=$(now)
    echo "$(secs "$t0" "$t1") $rss_s3 $(secs "$t2" "$t3")"
}

printf '%-6s | %8s %8s | %-7s %8s %10s %8s %10s\n' \
    compr file RSS server s3 's3 vs file' RSS-s3 's3->file'
for c in $compressions; do
    sync
    t0=$(now)
    /usr/bin/time -f '%M' -o "$work/rss" "$nf" copy --to "file://$work/file-$c?compression=$c&parallel-compression=true" "$top" >/dev/null 2>&1
    t1=$(now); rss_file=$(rss)
    file=$(secs "$t0" "$t1")
    for server in s3s-fs moto; do
        read -r s3 rss_s3 back < <(to_s3 "$server" "$c")
        printf '%-6s | %8s %8d | %-7s %8s %10s %8d %10s\n' \
            "$c" "$file" "$rss_file" "$server" "$s3" "$(ratio "$file" "$s3")" "$rss_s3" "$back"
    done
done
echo "s3 vs file: the S3 copy's speed as a share of the file:// copy's (file time / s3 time). Times in seconds, RSS in MB."
