#!/usr/bin/env bash
# Times the whole-cache commands on a large synthetic binary cache, in a
# directory and in a bucket of a local S3 server, and reports the time and
# peak RSS of each:
#
#   nixferry cache stats URL
#   nixferry cache verify URL --trusted-key PUB
#   nixferry cache pin URL web PATH          (PATH: the last path generated)
#   nixferry cache gc URL --dry-run --keep-newer-than 0s --grace 0s
#   nixferry cache gc URL --keep-newer-than 0s --grace 0s
#   nixferry cache verify URL --trusted-key PUB   (again, on what gc left)
#
#   benches/cache-scale.sh [N] [dir] [s3]      (default: 200000 dir s3)
#
# The cache (benches/src/bin/gen-cache.rs) holds N signed narinfos with a
# tiny uncompressed NAR each, in groups of 1,000 paths that refer to earlier
# paths of their group and to a shared base; the closure of the path pinned
# is a few dozen paths, so gc deletes nearly everything. The bucket is
# filled from the directory with `nixferry copy`, timed too. The S3 server
# is moto (from PyPI, the server the tests use, installed into a
# virtualenv under target/ if needed), started on 127.0.0.1 and stopped by
# this script; being Python, it bounds the S3 figures. Without `cache gc`
# in the nixferry run, the pin and gc steps are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200000}
shift || true
where=${*:-dir s3}

# NIXFERRY_BIN times another build of nixferry on the same data.
if [ -z "${NIXFERRY_BIN:-}" ]; then cargo build --release --locked -q -p nixferry-cli; fi
cargo build --release --locked -q -p nixferry-benches --bin gen-cache
nf=${NIXFERRY_BIN:-$PWD/target/release/nixferry}
gen=$PWD/target/release/gen-cache

work=${NIXFERRY_BENCH_DIR:-$PWD/target/bench-cache-scale}
rm -rf "$work"
mkdir -p "$work"
# A narinfo and a NAR file take a block each, and room for the listings
# and reports; the bucket's objects are in moto's memory.
need_kib=$((n * 10))
avail_kib=$(df -Pk "$work" | awk 'NR == 2 {print $4}')
if [ "$avail_kib" -lt "$need_kib" ]; then
    echo "cache-scale: $((need_kib / 1024)) MiB needed under $work, $((avail_kib / 1024)) MiB free" >&2
    exit 1
fi

export XDG_STATE_HOME=$work/state
now() { date +%s.%N; }
secs() { awk "BEGIN{printf \"%.2f\", $2 - $1}"; }

"$nf" key generate cache-scale-1 --secret-file "$work/key.sec" --public-file "$work/key.pub" >/dev/null
pub=$(cat "$work/key.pub")
t0=$(now)
"$gen" "$work/gen" "$n" "$work/key.sec" "$work/paths"
t1=$(now)
gen_secs=$(secs "$t0" "$t1")
top=$(tail -n 1 "$work/paths")
echo "generated $n paths in $gen_secs s ($(du -sh "$work/gen" | cut -f1) on disk); pinning $top"

has_gc=true
if ! "$nf" cache gc --help >/dev/null 2>&1; then
    has_gc=false
    echo "skipped: pin and gc ('$nf cache gc --help' fails: this nixferry has no cache gc)"
fi

rows=()
# step WHERE NAME CMD...: runs CMD (a nixferry command) after `sync`, its
# stdout and stderr in $work/WHERE-NAME.{out,err}, and adds a row: seconds,
# peak RSS, exit code and a note (the summary line the command prints).
step() {
    local w=$1 name=$2
    shift 2
    local log=$work/$w-$name t0 t1 rc=0 note
    sync
    t0=$(now)
    /usr/bin/time -f '%M' -o "$log.rss" "$@" >"$log.out" 2>"$log.err" || rc=$?
    t1=$(now)
    case $name in
    stats) note=$(grep -E '^(paths|unsigned paths):' "$log.out" | tr -s ' ' | paste -sd ',' -) ;;
    *) note=$(tail -n 1 "$log.err") ;;
    esac
    rows+=("$(printf '%-4s | %-16s | %8s %7d %4d | %s' "$w" "$name" "$(secs "$t0" "$t1")" \
        $(($(tail -n 1 "$log.rss") / 1024)) "$rc" "$note")")
    echo "${rows[-1]}"
}

# run WHERE URL: the steps on one cache.
run() {
    local w=$1 url=$2
    step "$w" stats "$nf" cache stats "$url"
    step "$w" verify "$nf" cache verify "$url" --trusted-key "$pub"
    if $has_gc; then
        step "$w" pin "$nf" cache pin "$url" web "$top"
        step "$w" gc-dry-run "$nf" cache gc "$url" --dry-run --keep-newer-than 0s --grace 0s
        step "$w" gc "$nf" cache gc "$url" --keep-newer-than 0s --grace 0s
        step "$w" verify-after-gc "$nf" cache verify "$url" --trusted-key "$pub"
    fi
}

for w in $where; do
    case $w in
    dir | s3) ;;
    *)
        echo "cache-scale: unknown place '$w' (dir or s3)" >&2
        exit 2
        ;;
    esac
done

header=$(printf '%-4s | %-16s | %8s %7s %4s | %s' where step seconds RSS-MB exit note)
echo "$header"
upload=
# The bucket first: it is filled from the directory, which gc then empties.
for w in s3 dir; do
    case " $where " in *" $w "*) ;; *) continue ;; esac
    case $w in
    dir)
        run dir "file://$work/gen"
        ;;
    s3)
        python=${NIXFERRY_TEST_PYTHON:-$PWD/target/py-venv/bin/python}
        if ! "$python" -c 'import moto.server' 2>/dev/null; then
            python3 -m venv target/py-venv
            target/py-venv/bin/pip install --quiet 'moto[server]==5.2.5'
            python=$PWD/target/py-venv/bin/python
        fi
        mkdir -p "$work/moto"
        "$python" crates/cli/tests/it/s3_server.py serve --port-file "$work/port" \
            --creds-file "$work/creds" --tmp-dir "$work/moto" --bucket scale &
        moto=$!
        trap 'kill "$moto" 2>/dev/null || true' EXIT
        for _ in $(seq 600); do [ -s "$work/port" ] && break; sleep 0.1; done
        [ -s "$work/port" ] || { echo "cache-scale: moto did not start" >&2; exit 1; }
        AWS_ACCESS_KEY_ID=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["access_key_id"])' "$work/creds")
        AWS_SECRET_ACCESS_KEY=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["secret_access_key"])' "$work/creds")
        export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
        url="s3://scale?endpoint=127.0.0.1:$(cat "$work/port")&scheme=http"
        # Uploaded as they are (uncompressed NARs, the same narinfos), by
        # the copy engine.
        t0=$(now)
        "$nf" copy --from "file://$work/gen" --to "$url&compression=none" --trusted-key "$pub" \
            --stdin <"$work/paths" >"$work/upload.out" 2>"$work/upload.err"
        t1=$(now)
        upload=$(secs "$t0" "$t1")
        echo "uploaded $n paths to moto in $upload s"
        run s3 "$url"
        kill "$moto"
        wait "$moto" 2>/dev/null || true
        trap - EXIT
        ;;
    esac
done

echo
echo "$n narinfos; generated in $gen_secs s${upload:+, uploaded to moto in $upload s}"
echo "$header"
printf '%s\n' "${rows[@]}"
echo "Times in seconds, peak RSS in MB; note: the summary the command prints."
