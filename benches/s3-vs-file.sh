#!/usr/bin/env bash
# Times `nixferry copy` of the same closure from the local store into a
# fresh file:// cache and into a fresh bucket of a local S3 server, in one
# run, for each compression, and reports the speed of the S3 copy as a
# share of the file:// copy's, and peak RSS.
#
#   benches/s3-vs-file.sh [compressions...]      (default: none zstd)
#
# The S3 server is moto (from PyPI, as the tests use it), started on
# 127.0.0.1 by this script and stopped at its end; its own speed bounds
# the S3 figures. The closure is benches/closure.nix (about 1 GiB, 113
# paths).
set -euo pipefail
cd "$(dirname "$0")/.."
export NIX_CONFIG=$'experimental-features = nix-command\nsandbox = false\nbuild-users-group =\nsubstituters ='
compressions=${*:-none zstd}

cargo build --release --locked -q -p nixferry-cli
nf=$PWD/target/release/nixferry
work=${NIXFERRY_BENCH_DIR:-$PWD/target/bench-s3}
rm -rf "$work"
mkdir -p "$work/moto"
python=${NIXFERRY_TEST_PYTHON:-$PWD/target/py-venv/bin/python}
if ! "$python" -c 'import moto.server' 2>/dev/null; then
    python3 -m venv target/py-venv
    target/py-venv/bin/pip install --quiet 'moto[server]==5.2.5'
    python=$PWD/target/py-venv/bin/python
fi

top=$(nix-build --no-out-link benches/closure.nix)
paths=$(nix-store -qR "$top" | wc -l)
size=$(nix path-info -S "$top" | awk '{print $2}')
echo "closure: $top ($paths paths, $((size / 1048576)) MiB)"

# The server, in this shell, so that the trap stops it.
harness=crates/cli/tests/it/s3_server.py
args=(serve --port-file "$work/port" --creds-file "$work/creds" --tmp-dir "$work/moto")
for c in $compressions; do args+=(--bucket "bench-$c"); done
"$python" "$harness" "${args[@]}" &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 600); do [ -s "$work/port" ] && break; sleep 0.1; done
port=$(cat "$work/port")
AWS_ACCESS_KEY_ID=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["access_key_id"])' "$work/creds")
AWS_SECRET_ACCESS_KEY=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["secret_access_key"])' "$work/creds")
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY

now() { date +%s.%N; }
secs() { awk "BEGIN{printf \"%.2f\", $2 - $1}"; }
ratio() { awk "BEGIN{printf \"%.0f%%\", 100 * $1 / $2}"; }
rss() { echo $(( $(cat "$work/rss") / 1024 )); }

printf '%-6s | %8s %8s | %12s | %8s %8s | %9s\n' \
    compr file s3 's3 vs file' RSS-file RSS-s3 's3->file'
for c in $compressions; do
    sync
    t0=$(now)
    /usr/bin/time -f '%M' -o "$work/rss" "$nf" copy --to "file://$work/file-$c?compression=$c&parallel-compression=true" "$top" >/dev/null 2>&1
    t1=$(now); rss_file=$(rss)
    sync
    t2=$(now)
    /usr/bin/time -f '%M' -o "$work/rss" "$nf" copy --to "s3://bench-$c?endpoint=127.0.0.1:$port&scheme=http&compression=$c&parallel-compression=true" "$top" >/dev/null 2>&1
    t3=$(now); rss_s3=$(rss)
    t4=$(now)
    "$nf" copy --no-check-sigs --from "s3://bench-$c?endpoint=127.0.0.1:$port&scheme=http" --to "file://$work/back-$c?compression=$c&fsync=false" "$top" >/dev/null 2>&1
    t5=$(now)
    file=$(secs "$t0" "$t1"); s3=$(secs "$t2" "$t3")
    printf '%-6s | %8s %8s | %12s | %8d %8d | %9s\n' \
        "$c" "$file" "$s3" "$(ratio "$file" "$s3")" "$rss_file" "$rss_s3" "$(secs "$t4" "$t5")"
done
echo "s3 vs file: the S3 copy's speed as a share of the file:// copy's (file time / s3 time). Times in seconds, RSS in MB."
