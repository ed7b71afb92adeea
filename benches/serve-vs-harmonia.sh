#!/usr/bin/env bash
# Benchmarks `nixferry serve --store local` against harmonia, another
# binary cache server that serves the local Nix store from its database,
# side by side in one run on 127.0.0.1. Both serve this machine's store
# and sign narinfos with the same generated key; NARs go out uncompressed
# from both (harmonia's on-the-fly compression is turned off, its other
# settings are its defaults: 4 workers).
#
#   HARMONIA_BIN=/path/to/harmonia-cache benches/serve-vs-harmonia.sh
#
# HARMONIA_BIN names a harmonia-cache binary (harmonia 3.x, the pure-Rust
# versions, from github.com/nix-community/harmonia), built once from its
# public source, outside this repository. This script downloads and builds
# nothing of it; it only runs the binary it is given, with a config file
# of its own (bind address, signing key) made in a temporary directory.
# One way to build it (the script was written against release 3.2.0):
#
#   git clone https://github.com/nix-community/harmonia && cd harmonia
#   git checkout harmonia-v3.2.0
#   cargo build --release --locked -p harmonia-cache
#   # then HARMONIA_BIN=$PWD/target/release/harmonia-cache
#
# Measured, with the closure of benches/closure.nix (113 paths):
#
#   latency     uncached narinfos: one client, one request after another on
#               a keep-alive connection to each server, each of the closure's
#               narinfos once a round, asked of the two servers in turn,
#               request by request (so that both see the same load); rounds
#               2.5 s apart, since nixferry serves a narinfo it made in the
#               last 2 s again as it is (the first round, a warm-up, is left
#               out); median and 90th percentile, client time included
#   narinfo/s   wrk, 2 threads, 64 connections, 10 s, all of the closure's
#               narinfos in turn (here nixferry's 2 s reuse does apply)
#   pull        `nix copy --from http://…` of the whole closure into a fresh
#               file:// cache (compression=none): wall time and the server's
#               CPU time (utime+stime), the better of two runs
#   NAR GB/s    the closure's largest NAR, uncompressed, best of three
#   threads     the server's threads right after its wrk run
#   tokens      nixferry only: narinfo/s as above with --tokens-file and a
#               read token sent as `Authorization: Bearer`, against without
#   idle        2,000 idle connections held open: the server's peak RSS
#               (VmHWM, reset just before) and open descriptors, and the
#               median latency of a normal client fetching the closure's
#               narinfos meanwhile
#   proxy       pulling the closure through `nixferry serve --upstream` (an
#               empty file:// cache in front of a nixferry serving the local
#               store): a cold pull, a warm one, and a direct one; skipped
#               by a nixferry without --upstream
#
# Ratios are nixferry/harmonia, since the machine may be shared and noisy:
# for µs, s, MB and threads lower is better for nixferry, for /s and GB/s
# higher. Needs wrk and curl; the load generator shares the CPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
export NIX_CONFIG=$'experimental-features = nix-command\nsandbox = false\nbuild-users-group =\nsubstituters =\nnarinfo-cache-positive-ttl = 0\nnarinfo-cache-negative-ttl = 0'

if [ -z "${HARMONIA_BIN:-}" ] || [ ! -x "${HARMONIA_BIN:-}" ]; then
    cat >&2 <<'EOF'
serve-vs-harmonia: set HARMONIA_BIN to a harmonia-cache binary, built once
from harmonia's public source (github.com/nix-community/harmonia, 3.x, its
harmonia-cache package), outside this repository; see the comment at the
top of this script.
EOF
    exit 2
fi
hb=$HARMONIA_BIN

# NIXFERRY_BIN times another build of nixferry (an older one, say) on the
# same data instead of this tree's.
if [ -z "${NIXFERRY_BIN:-}" ]; then cargo build --release --locked -q -p nixferry-cli; fi
nf=${NIXFERRY_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/nixferry}
top=$(nix-build --no-out-link benches/closure.nix)
work=$(mktemp -d /tmp/nixferry-harmonia-bench.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

"$nf" key generate bench-1 --secret-file "$work/key.secret" --public-file "$work/key.public"
pk=$(cat "$work/key.public")
nix-store -qR "$top" | xargs -n1 basename | cut -c1-32 > "$work/hashes"
npaths=$(wc -l < "$work/hashes")

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() { # url
    for _ in $(seq 100); do curl -sf -o /dev/null "$1/health" && return; sleep 0.1; done
    echo "$1 did not come up" >&2; exit 1
}
serve() { # log args...: starts a nixferry server (in this shell, so that
    # cleanup knows its pid) and sets $url and $pid
    local log=$1; shift
    local p; p=$(port)
    "$nf" serve --listen "127.0.0.1:$p" "$@" > "$log" 2>&1 &
    pid=$!; pids+=($pid)
    url=http://127.0.0.1:$p
    wait_up "$url"
}

serve "$work/nixferry.log" --store local --secret-key-file "$work/key.secret"
nf_url=$url; nf_pid=$pid
h_port=$(port)
cat > "$work/harmonia.toml" <<EOF
bind = "127.0.0.1:$h_port"
sign_key_paths = ["$work/key.secret"]
enable_compression = false
EOF
CONFIG_FILE=$work/harmonia.toml "$hb" > "$work/harmonia.log" 2>&1 &
h_pid=$!; pids+=($h_pid)
h_url=http://127.0.0.1:$h_port
wait_up "$h_url"
for u in "$nf_url" "$h_url"; do
    curl -sf "$u/$(basename "$top" | cut -c1-32).narinfo" | grep -q "^Sig: bench-1:" ||
        { echo "$u: no narinfo signed with the key" >&2; exit 1; }
done

# The clients: latency rounds, and idle connections beside a normal client.
cat > "$work/client.py" <<'EOF'
import resource, socket, statistics, sys, time

def connect(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s

def get(s, path):
    """GET path on keep-alive connection s: the status (the body is read)."""
    s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            raise EOFError
        buf += d
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    n = next(int(v) for k, _, v in (l.partition(b":") for l in lines[1:])
             if k.strip().lower() == b"content-length")
    while len(body) < n:
        d = s.recv(65536)
        if not d:
            raise EOFError
        body += d
    return int(lines[0].split()[1])

def timed(s, path):
    t0 = time.perf_counter_ns()
    status = get(s, path)
    dt = (time.perf_counter_ns() - t0) / 1000
    if status != 200:
        sys.exit(f"{path}: {status}")
    return dt

def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]

def latency(rounds, gap, hashes, ports):
    conns = {p: connect(p) for p in ports}
    times = {p: [] for p in ports}
    for r in range(rounds + 1):
        for h in hashes:  # the servers in turn, request by request
            for p in ports:
                try:
                    dt = timed(conns[p], f"/{h}.narinfo")
                except (EOFError, ConnectionError):  # closed while idle
                    conns[p] = connect(p)
                    dt = timed(conns[p], f"/{h}.narinfo")
                if r > 0:
                    times[p].append(dt)
        time.sleep(gap)
    for p in ports:
        print(f"{statistics.median(times[p]):.0f} {pct(times[p], 0.9):.0f}")

def status(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

def idle(port, pid, n, hashes):
    resource.setrlimit(resource.RLIMIT_NOFILE, (n + 256, max(n + 256, resource.getrlimit(resource.RLIMIT_NOFILE)[1])))
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    rss0 = status(pid, "VmRSS")
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    time.sleep(0.5)
    fds = len(__import__("os").listdir(f"/proc/{pid}/fd"))
    s = connect(port)
    times = [timed(s, f"/{h}.narinfo") for h in hashes]
    hwm = status(pid, "VmHWM")
    for c in idle:
        c.setblocking(False)
    closed = 0
    for c in idle:
        try:
            if c.recv(1) == b"":
                closed += 1
        except BlockingIOError:
            pass
        except ConnectionError:
            closed += 1
        c.close()
    print(f"{hwm / 1024:.1f} {(hwm - rss0) / 1024:.1f} {fds} {statistics.median(times):.0f} {closed}")

hashes = open(sys.argv[2]).read().split()
if sys.argv[1] == "latency":
    latency(int(sys.argv[3]), float(sys.argv[4]), hashes, [int(p) for p in sys.argv[5:]])
else:
    idle(int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), hashes)
EOF
port_of() { echo "${1##*:}"; }

ratio() { awk "BEGIN{ if ($2 + 0 == 0) print \"-\"; else printf \"%.2f\", $1 / $2 }"; }
row() { # label nixferry harmonia
    printf '%-44s %12s %12s %10s\n' "$1" "$2" "$3" "$(ratio "$2" "$3")"
}
echo "closure: $top ($npaths paths); $(curl -s "$h_url/version") (4 workers, compression off); $("$nf" --version)"
printf '%-44s %12s %12s %10s\n' "" nixferry harmonia ratio

# 1. Uncached narinfo latency.
rounds=8
lat=$(python3 "$work/client.py" latency "$work/hashes" "$rounds" 2.5 "$(port_of "$nf_url")" "$(port_of "$h_url")")
read -r nf_med nf_p90 h_med h_p90 <<<"$(tr '\n' ' ' <<<"$lat")"
row "narinfo µs, uncached, median ($rounds x $npaths)" "$nf_med" "$h_med"
row "narinfo µs, uncached, p90" "$nf_p90" "$h_p90"

# 2. and 5. narinfo/s under load, and the threads after it.
{
    printf 'paths = {'
    while read -r h; do printf '"/%s.narinfo",' "$h"; done < "$work/hashes"
    printf '}\ni = 0\nrequest = function()\n  i = i + 1\n  return wrk.format("GET", paths[(i %% #paths) + 1])\nend\n'
} > "$work/rotate.lua"
rot() { # url [wrk args]: narinfos per second, all of them answered 200
    local out
    out=$(wrk -t2 -c64 -d10s -s "$work/rotate.lua" "${@:2}" "$1")
    if grep -q "Non-2xx" <<<"$out"; then echo "$1: not all answers were 200" >&2; exit 1; fi
    awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out"
}
threads() { awk '/^Threads:/ {print $2}' "/proc/$1/status"; }
nf_rps=$(rot "$nf_url"); nf_threads=$(threads "$nf_pid")
h_rps=$(rot "$h_url"); h_threads=$(threads "$h_pid")
row "narinfo/s, wrk -c64, all $npaths in turn" "$nf_rps" "$h_rps"
row "threads after the wrk run" "$nf_threads" "$h_threads"

# 3. Pulling the closure with nix copy.
now() { date +%s.%N; }
tck=$(getconf CLK_TCK)
cpu() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
pull() { # url pid: "wall cpu" (s) of the better of two copies
    local i c0 c1 t0 t1
    for i in 1 2; do
        rm -rf "$work/pull"; sync
        c0=$(cpu "$2"); t0=$(now)
        nix copy --from "$1" --to "file://$work/pull?compression=none" \
            --option trusted-public-keys "$pk" "$top" 2>"$work/pull.err" ||
            { cat "$work/pull.err" >&2; exit 1; }
        t1=$(now); c1=$(cpu "$2")
        awk "BEGIN{printf \"%.2f %.2f\n\", $t1 - $t0, ($c1 - $c0) / $tck}"
    done | sort -n | head -1
    rm -rf "$work/pull"
}
read -r nf_wall nf_cpu < <(pull "$nf_url" "$nf_pid")
read -r h_wall h_cpu < <(pull "$h_url" "$h_pid")
row "pull s, nix copy, wall (best of 2)" "$nf_wall" "$h_wall"
row "pull s, server CPU (that run)" "$nf_cpu" "$h_cpu"

# 4. The largest NAR, by its URL in each server's narinfo.
big=$(nix path-info --json -r "$top" | python3 -c 'import json,sys; print(max(json.load(sys.stdin), key=lambda i: i["narSize"])["path"])')
bighash=$(basename "$big" | cut -c1-32)
gbps() { # url of a narinfo: the best of three downloads
    local narurl
    narurl=$(curl -s "$1" | awk '/^URL:/ {print $2}')
    for _ in 1 2 3; do
        curl -s -o /dev/null -w '%{size_download} %{time_total}\n' "$(dirname "$1")/$narurl"
    done | awk '{r = $1 / $2 / 1e9; if (r > best) best = r} END {printf "%.2f", best}'
}
row "NAR GB/s, largest ($(( $(nix path-info "$big" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["narSize"])') / 1048576 )) MiB), best of 3" \
    "$(gbps "$nf_url/$bighash.narinfo")" "$(gbps "$h_url/$bighash.narinfo")"

# 7. Idle connections (uncached narinfos: nothing served in the last 2 s).
sleep 2.5
read -r nf_hwm nf_grow nf_fds nf_lat nf_closed < <(python3 "$work/client.py" idle "$work/hashes" "$(port_of "$nf_url")" "$nf_pid" 2000)
sleep 2.5
read -r h_hwm h_grow h_fds h_lat h_closed < <(python3 "$work/client.py" idle "$work/hashes" "$(port_of "$h_url")" "$h_pid" 2000)
row "2000 idle connections: peak RSS MB" "$nf_hwm" "$h_hwm"
row "  of which since they were opened, MB" "$nf_grow" "$h_grow"
row "  server's open descriptors" "$nf_fds" "$h_fds"
row "  narinfo µs meanwhile, median" "$nf_lat" "$h_lat"
if [ "$nf_closed$h_closed" != 00 ]; then
    echo "  (idle connections closed by the server before the end: nixferry $nf_closed, harmonia $h_closed)"
fi

# 6. nixferry only: a private cache's token check.
tok=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
echo "read $tok" > "$work/tokens"
serve "$work/nixferry-tokens.log" --store local --secret-key-file "$work/key.secret" --tokens-file "$work/tokens"
tok_url=$url
if [ "$(curl -s -o /dev/null -w '%{http_code}' "$tok_url/$bighash.narinfo")" != 401 ]; then
    echo "$tok_url: a narinfo without a token was not refused" >&2; exit 1
fi
with=$(rot "$tok_url" -H "Authorization: Bearer $tok")
without=$(rot "$nf_url")
printf '%-44s %12s %12s %10s\n' "nixferry narinfo/s: --tokens-file, without" "$with" "$without" "$(ratio "$with" "$without")"

# 8. Through a nixferry proxy (an empty file:// cache in front of the
# nixferry serving the local store) against directly.
if "$nf" serve --help | grep -q -- --upstream; then
    mkdir "$work/proxy-cache"
    serve "$work/proxy.log" --store "file://$work/proxy-cache" --upstream "$nf_url" --trusted-key "$pk"
    proxy_url=$url; proxy_pid=$pid
    read -r d_wall _ < <(pull "$nf_url" "$nf_pid")
    pull1() { # url pid: "wall cpu" of one copy
        local c0 c1 t0 t1
        rm -rf "$work/pull"; sync
        c0=$(cpu "$2"); t0=$(now)
        nix copy --from "$1" --to "file://$work/pull?compression=none" \
            --option trusted-public-keys "$pk" "$top" 2>"$work/pull.err" ||
            { cat "$work/pull.err" >&2; exit 1; }
        t1=$(now); c1=$(cpu "$2")
        rm -rf "$work/pull"
        awk "BEGIN{printf \"%.2f %.2f\n\", $t1 - $t0, ($c1 - $c0) / $tck}"
    }
    read -r cold_wall cold_cpu < <(pull1 "$proxy_url" "$proxy_pid")
    read -r warm_wall warm_cpu < <(pull1 "$proxy_url" "$proxy_pid")
    printf 'proxy pull s: direct %s   through the proxy, cold %s (%sx, proxy CPU %s s)   warm %s (%sx, proxy CPU %s s)\n' \
        "$d_wall" "$cold_wall" "$(ratio "$cold_wall" "$d_wall")" "$cold_cpu" \
        "$warm_wall" "$(ratio "$warm_wall" "$d_wall")" "$warm_cpu"
else
    echo "proxy: skipped: this nixferry has no --upstream"
fi
