#!/usr/bin/env bash
# Times `nixferry copy --to ssh://` and `nix copy --to ssh://` side by side,
# in one run, pushing the benchmark closure (benches/closure.nix) to
# `nix-store --serve --write` on fresh chroot stores behind OpenSSH servers
# on 127.0.0.1 (one server per "host"; both ends run on this machine, so
# the receiving Nix's own work counts):
#
#   push-1    one host
#   fanout-3  three hosts: nixferry with --to three times (each NAR read
#             once); Nix one host after the other, as it can only do
#
#   benches/ssh-vs-nix.sh            plain loopback
#   benches/ssh-vs-nix.sh --netem    each host behind an emulated link:
#                                    20 ms round trip, 200 Mbit/s
#
# The emulated links are benches/linkemu.py, a proxy per host on 127.0.0.1
# that delays every byte by 10 ms each way and shares 200 Mbit/s per
# direction among the host's connections (this machine's kernel has no
# `tc netem`). Needs root and sshd (openssh-server).
#
# Both tools run at their default settings: nixferry with its default
# max-connections (see ServeStore::open), Nix with its default of 1, which
# is all `nix copy --to ssh://` can use without a ControlMaster. The sshd
# servers keep OpenSSH's default MaxStartups (10:30:100).
# NIXFERRY_SSH_CONNECTIONS, if set, passes max-connections to nixferry.
# The binary is built into CARGO_TARGET_DIR (default: target).
set -euo pipefail
cd "$(dirname "$0")/.."

netem=false
[[ ${1:-} == --netem ]] && netem=true

export NIX_CONFIG=$'experimental-features = nix-command\nsandbox = false\nbuild-users-group =\nsubstituters ='
cargo build --release --locked -q -p nixferry-cli
nf=${CARGO_TARGET_DIR:-$PWD/target}/release/nixferry
top=$(nix-build --no-out-link benches/closure.nix)
paths=$(nix-store -qR "$top" | wc -l)
size=$(nix path-info -S "$top" | awk '{print $2}')
echo "closure: $top ($paths paths, $((size / 1048576)) MiB)"

work=$(mktemp -d /tmp/nixferry-ssh-bench.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# --- three OpenSSH servers, each its own "host" --------------------------
ssh-keygen -q -t ed25519 -N '' -f "$work/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$work/user_key"
cp "$work/user_key.pub" "$work/authorized_keys"
printf '%s\n' "$NIX_CONFIG" > "$work/nix.conf"
mkdir -p /run/sshd
user=$(id -un)
ports=()
for i in 1 2 3; do
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    ports+=("$port")
    cat > "$work/sshd_config_$i" <<EOF
ListenAddress 127.0.0.1:$port
HostKey $work/host_key
AuthorizedKeysFile $work/authorized_keys
AllowUsers $user
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PidFile $work/sshd_$i.pid
LogLevel ERROR
SetEnv "PATH=$(dirname "$(command -v nix-store)"):/usr/bin:/bin" "NIX_USER_CONF_FILES=$work/nix.conf"
EOF
    /usr/sbin/sshd -D -e -f "$work/sshd_config_$i" 2>>"$work/sshd.log" &
    pids+=($!)
done
for port in "${ports[@]}"; do
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
done
host_key_b64=$(cut -d' ' -f1,2 "$work/host_key.pub" | base64 -w0)
: > "$work/known_hosts"
for port in "${ports[@]}"; do
    echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$work/host_key.pub")" >> "$work/known_hosts"
done

if $netem; then
    # The hosts are reached through their links from here on.
    for i in 1 2 3; do
        port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
        python3 benches/linkemu.py "$port" "${ports[$((i - 1))]}" --delay-ms 10 --rate-mbit 200 > "$work/link_$i.ready" &
        pids+=($!)
        ports[$((i - 1))]=$port
        echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$work/host_key.pub")" >> "$work/known_hosts"
    done
    for i in 1 2 3; do
        for _ in $(seq 100); do grep -q ready "$work/link_$i.ready" 2>/dev/null && break; sleep 0.1; done
    done
    echo "links: 20 ms round trip, 200 Mbit/s per host (emulated)"
fi

connections=${NIXFERRY_SSH_CONNECTIONS:+&max-connections=$NIXFERRY_SSH_CONNECTIONS}
echo "nixferry: ${NIXFERRY_SSH_CONNECTIONS:+max-connections=}${NIXFERRY_SSH_CONNECTIONS:-default settings}; nix: default settings"
nf_url() { # port store
    echo "ssh://$user@127.0.0.1:$1?ssh-key=$work/user_key&base64-ssh-public-host-key=$host_key_b64&remote-store=$2$connections"
}
sshopts() { # port
    echo "-F /dev/null -p $1 -i $work/user_key -oUserKnownHostsFile=$work/known_hosts -oStrictHostKeyChecking=yes -oBatchMode=yes"
}
now() { date +%s.%N; }
secs() { awk "BEGIN{printf \"%.2f\", $2 - $1}"; }
fresh() { rm -rf "$work"/store-*; sync; }

run_nf() { # hosts...
    local args=()
    for i in "$@"; do args+=(--to "$(nf_url "${ports[$((i - 1))]}" "$work/store-nf-$i")"); done
    "$nf" copy "${args[@]}" "$top" >/dev/null 2>"$work/nf.log" || { echo "nixferry failed:"; tail -20 "$work/nf.log"; exit 1; }
}
run_nix() { # hosts...
    for i in "$@"; do
        NIX_SSHOPTS=$(sshopts "${ports[$((i - 1))]}") \
            nix copy --to "ssh://$user@127.0.0.1?remote-store=$work/store-nix-$i" "$top"
    done
}
check() { # store
    local n
    n=$(nix path-info -r --store "$1" "$top" | wc -l)
    [[ $n == "$paths" ]] || { echo "$1 has $n paths, expected $paths"; exit 1; }
}

declare -A NF NIX
printf '%-10s %10s %10s %9s\n' case nixferry-s nix-s speedup
for case in push-1 fanout-3; do
    hosts=(1); [[ $case == fanout-3 ]] && hosts=(1 2 3)
    fresh
    t0=$(now); run_nf "${hosts[@]}"; t1=$(now)
    for i in "${hosts[@]}"; do check "$work/store-nf-$i"; done
    fresh
    t2=$(now); run_nix "${hosts[@]}"; t3=$(now)
    for i in "${hosts[@]}"; do check "$work/store-nix-$i"; done
    ours=$(secs "$t0" "$t1"); theirs=$(secs "$t2" "$t3")
    printf '%-10s %10s %10s %8.2fx\n' "$case" "$ours" "$theirs" "$(awk "BEGIN{print $theirs / $ours}")"
    NF[$case]=$ours; NIX[$case]=$theirs
done
ratio() { awk "BEGIN{printf \"%.2f\", $1 / $2}"; }
echo "3 hosts / 1 host: nixferry $(ratio "${NF[fanout-3]}" "${NF[push-1]}")x, nix $(ratio "${NIX[fanout-3]}" "${NIX[push-1]}")x"
