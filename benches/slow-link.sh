#!/usr/bin/env bash
# Deploys over a slow link: `nixferry copy --to ssh://` against
# `nix copy --to ssh://`, one run each, onto fresh chroot stores
# (`remote-store=DIR`) behind an OpenSSH server on 127.0.0.1, reached
# through an emulated link of 50 Mbit/s per direction and 40 ms round trip
# (benches/linkemu.py, 20 ms each way). The remote session's PATH finds
# the nixferry under test and nix-store, so `nixferry copy` uses nixferry's
# own protocol when it can (zstd, deltas, resume); Nix runs nix-store.
# Every copy runs with its defaults.
#
#   first-deploy  generation 1 of benches/closure.nix (114 paths, about
#                 1.1 GiB) onto an empty store
#   upgrade       generation 2 (a mass rebuild: every path new, contents
#                 changed only where store paths are embedded) onto a
#                 store that has generation 1 (put there beforehand, not
#                 timed): nixferry with deltas (its default), nixferry
#                 with `delta=false` (zstd only), Nix
#   resume        one 200 MiB path (benches/big-nar.nix) onto an empty
#                 store: first a copy that is not cut, then one whose
#                 connection the link resets (TCP RST) once half of the
#                 uncut copy's upstream bytes have passed, and, if that
#                 copy failed, the same copy again (rows TOOL-uncut, and
#                 TOOL-cut or TOOL-cut+again, the two runs together). The
#                 last lines give what crossed the link after the cut,
#                 against the uncut copy
#
# For each copy: wall time, bytes up and down on the link (the SSH stream,
# from linkemu's --stats), CPU seconds (user + system) of the local command
# with its children (ssh included) and of the remote program (nixferry or
# nix-store, run through a wrapper under /usr/bin/time; sshd not counted),
# and which remote program ran (a nixferry row that shows nix-store fell
# back to `nix-store --serve`). A copy that fails or runs past its time
# limit is shown as failed with the end of its log.
#
# Targets: upgrade, nixferry's bytes with deltas at most 5% of its bytes
# with zstd only, and at least 10x faster than Nix; resume, what nixferry
# sends after the cut at most 55% of an uncut copy.
#
#   benches/slow-link.sh
#
# Settings (environment):
#   SLOW_LINK_MBIT=50        link rate per direction, Mbit/s
#   SLOW_LINK_DELAY_MS=20    one-way delay, ms
#   SLOW_LINK_CASES="first-deploy upgrade resume"
#   SLOW_LINK_TOOLS="nixferry nix"
#   NIXFERRY=PATH            a nixferry binary to use instead of building
#                            `cargo build --release -p nixferry-cli`
#
# At 50 Mbit/s a copy of the whole closure takes about 3 minutes, the
# whole run about 20. Needs root, sshd (openssh-server), Nix and
# /usr/bin/time (Debian package `time`).
set -euo pipefail
cd "$(dirname "$0")/.."

mbit=${SLOW_LINK_MBIT:-50}
delay_ms=${SLOW_LINK_DELAY_MS:-20}
cases=${SLOW_LINK_CASES:-first-deploy upgrade resume}
tools=${SLOW_LINK_TOOLS:-nixferry nix}

for need in /usr/bin/time /usr/sbin/sshd; do
    [[ -x $need ]] || { echo "slow-link.sh needs $need (Debian packages time, openssh-server)" >&2; exit 1; }
done

has() { [[ " $1 " == *" $2 "* ]]; }

export NIX_CONFIG=$'experimental-features = nix-command\nsandbox = false\nbuild-users-group =\nsubstituters ='
if ! has "$tools" nixferry; then
    nf=/bin/false  # not run
elif [[ -n ${NIXFERRY:-} ]]; then
    nf=$(realpath "$NIXFERRY")
else
    cargo build --release --locked -q -p nixferry-cli
    target_dir=$(cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    nf=$target_dir/release/nixferry
fi
[[ -x $nf ]] || { echo "no nixferry binary at $nf" >&2; exit 1; }
nix_store=$(command -v nix-store)

gen1=$(nix-build --no-out-link benches/closure.nix)
gen2=$(nix-build --no-out-link benches/closure.nix --argstr generation 2)
bignar=$(nix-build --no-out-link benches/big-nar.nix)
for p in "$gen1" "$gen2" "$bignar"; do
    echo "$(basename "$p"): $(nix-store -qR "$p" | wc -l) paths, $(($(nix path-info -S "$p" | awk '{print $2}') / 1048576)) MiB"
done

work=$(mktemp -d /tmp/nixferry-slow-link.XXXXXX)
pids=()
child=
cleanup() {
    # A copy under way: its `timeout` passes the signal on to the copy.
    [[ -z $child ]] || pkill -TERM -P "$child" 2>/dev/null || true
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # port
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1" >&2; exit 1
}

# --- the remote programs, under /usr/bin/time ------------------------------
# Each appends "<program> <user s> <system s>" to remote-cpu when it ends,
# and a line to remote-started when it starts.
mkdir "$work/bin"
for prog in nixferry nix-store; do
    real=$nf; [[ $prog == nix-store ]] && real=$nix_store
    cat > "$work/bin/$prog" <<EOF
#!/bin/sh
echo "$prog" >> "$work/remote-started"
exec /usr/bin/time -a -o "$work/remote-cpu" -f "$prog %U %S" "$real" "\$@"
EOF
    chmod +x "$work/bin/$prog"
done

# --- one OpenSSH server ---------------------------------------------------
ssh-keygen -q -t ed25519 -N '' -f "$work/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$work/user_key"
cp "$work/user_key.pub" "$work/authorized_keys"
printf '%s\n' "$NIX_CONFIG" > "$work/nix.conf"
mkdir -p /run/sshd
user=$(id -un)
sshd_port=$(free_port)
cat > "$work/sshd_config" <<EOF
ListenAddress 127.0.0.1:$sshd_port
HostKey $work/host_key
AuthorizedKeysFile $work/authorized_keys
AllowUsers $user
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PidFile $work/sshd.pid
LogLevel ERROR
MaxStartups 100
SetEnv "PATH=$work/bin:$(dirname "$nf"):$(dirname "$nix_store"):/usr/bin:/bin" "NIX_USER_CONF_FILES=$work/nix.conf"
EOF
/usr/sbin/sshd -D -e -f "$work/sshd_config" 2>>"$work/sshd.log" &
pids+=($!)
wait_port "$sshd_port"
host_key=$(cut -d' ' -f1,2 "$work/host_key.pub")
host_key_b64=$(printf '%s' "$host_key" | base64 -w0)

# --- the links ------------------------------------------------------------
# "main" for every copy; a new "cut-N" for each copy that is to be cut.
: > "$work/known_hosts"
declare -A LINK_PORT LINK_PID
start_link() { # name [--cut-after BYTES]
    local name=$1 port
    shift
    port=$(free_port)
    python3 benches/linkemu.py "$port" "$sshd_port" --delay-ms "$delay_ms" --rate-mbit "$mbit" \
        --stats "$work/link-$name.json" "$@" > "$work/link-$name.out" 2>>"$work/link.log" &
    pids+=($!)
    LINK_PID[$name]=$!
    LINK_PORT[$name]=$port
    for _ in $(seq 200); do grep -q ready "$work/link-$name.out" 2>/dev/null && break; sleep 0.1; done
    grep -q ready "$work/link-$name.out" || { echo "link $name did not start" >&2; exit 1; }
    echo "[127.0.0.1]:$port $host_key" >> "$work/known_hosts"
}
stop_link() { # name
    kill "${LINK_PID[$1]}" 2>/dev/null || true
    wait "${LINK_PID[$1]}" 2>/dev/null || true
}
link_stat() { # name field
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$work/link-$1.json" "$2"
}
settle() { # name: waits until no connection is open on the link
    for _ in $(seq 300); do
        [[ $(link_stat "$1" open) == 0 ]] && return
        sleep 0.1
    done
    echo "link $1: connections still open" >&2
}
start_link main
echo "link: $mbit Mbit/s per direction, $((2 * delay_ms)) ms round trip (emulated)"

nf_url() { # link store [params]
    echo "ssh://$user@127.0.0.1:${LINK_PORT[$1]}?ssh-key=$work/user_key&base64-ssh-public-host-key=$host_key_b64&remote-store=$2${3:+&$3}"
}
nix_sshopts() { # link
    echo "-F /dev/null -p ${LINK_PORT[$1]} -i $work/user_key -oUserKnownHostsFile=$work/known_hosts -oStrictHostKeyChecking=yes -oBatchMode=yes"
}

# --- one copy -------------------------------------------------------------
# copy TOOL LINK STORE PATH [URL-PARAMS]: runs one copy, with a time limit
# of four times what the path's NAR needs on the link, plus two minutes;
# sets R_OK (true/false), R_SECS, R_UP, R_DOWN, R_CPU, R_RCPU, R_PROG and,
# if the link cut, R_AFTER_CUT (bytes both ways after the cut).
copy() {
    local tool=$1 link=$2 store=$3 path=$4 params=${5:-} nar limit up0 down0 status=0
    nar=$(nix path-info -S "$path" | awk '{print $2}')
    limit=$(awk "BEGIN{printf \"%d\", 120 + 4 * $nar * 8 / ($mbit * 1e6)}")
    settle "$link"
    up0=$(link_stat "$link" up); down0=$(link_stat "$link" down)
    : > "$work/remote-started"; : > "$work/remote-cpu"
    # In the background, so that a signal stops the script at once.
    if [[ $tool == nixferry ]]; then
        /usr/bin/time -o "$work/local-cpu" -f "%e %U %S" \
            timeout -k 10 "$limit" "$nf" copy --to "$(nf_url "$link" "$store" "$params")" "$path" \
            > "$work/copy.log" 2>&1 &
    else
        NIX_SSHOPTS=$(nix_sshopts "$link") /usr/bin/time -o "$work/local-cpu" -f "%e %U %S" \
            timeout -k 10 "$limit" nix copy --to "ssh://$user@127.0.0.1?remote-store=$store${params:+&$params}" "$path" \
            > "$work/copy.log" 2>&1 &
    fi
    child=$!
    wait "$child" || status=$?
    child=
    settle "$link"
    # The remote program may still be finishing (after a cut, say).
    for _ in $(seq 300); do
        (($(wc -l < "$work/remote-started") <= $(grep -cE '^[^ ]+ [0-9.]+ [0-9.]+$' "$work/remote-cpu"))) && break
        sleep 0.1
    done
    R_OK=true
    if ((status != 0)); then
        R_OK=false
        ((status == 124)) && echo "  $tool: no result after ${limit}s, stopped"
        if [[ $link == cut-* && $(link_stat "$link" cut) != 0 ]]; then
            echo "  $tool failed (exit $status) on the cut link; its log ends:"
        else
            echo "  $tool failed (exit $status); its log ends:"
        fi
        tail -n 8 "$work/copy.log" | cut -c 1-300 | sed 's/^/    /'
    fi
    R_SECS=$(awk 'END{print $1}' "$work/local-cpu")
    R_CPU=$(awk 'END{printf "%.1f", $2 + $3}' "$work/local-cpu")
    R_RCPU=$(awk 'NF == 3 && $2 ~ /^[0-9.]+$/ {s += $2 + $3} END{printf "%.1f", s}' "$work/remote-cpu")
    R_PROG=$(sort -u "$work/remote-started" | paste -sd+)
    R_UP=$(($(link_stat "$link" up) - up0)); R_DOWN=$(($(link_stat "$link" down) - down0))
    R_AFTER_CUT=
    if [[ $link == cut-* && $(link_stat "$link" cut) != 0 ]]; then
        R_AFTER_CUT=$(($(link_stat "$link" up) + $(link_stat "$link" down) - $(link_stat "$link" cut_up) - $(link_stat "$link" cut_down)))
    fi
}
complete() { # store path
    local want have
    want=$(nix-store -qR "$2" | wc -l)
    have=$(nix path-info -r --store "$1" "$2" 2>/dev/null | wc -l) || true
    [[ $have == "$want" ]] || { echo "  $1 has $have of the $want paths"; return 1; }
}
fresh() { rm -rf "$work"/store-*; sync; }

# --- the table --------------------------------------------------------------
declare -A SECS BYTES
mb() { awk "BEGIN{printf \"%.1f\", $1 / 1e6}"; }
header() { printf '%-13s %-18s %-9s %8s %9s %9s %8s %8s\n' case tool remote seconds MB-up MB-down cpu-loc cpu-rem; }
row() { # case tool
    local secs=$R_SECS prog=${R_PROG:--}
    $R_OK || secs=failed
    printf '%-13s %-18s %-9s %8s %9s %9s %8s %8s\n' "$1" "$2" "$prog" "$secs" "$(mb "$R_UP")" "$(mb "$R_DOWN")" "$R_CPU" "$R_RCPU" | tee -a "$work/table"
    if $R_OK; then SECS[$1/$2]=$R_SECS; BYTES[$1/$2]=$((R_UP + R_DOWN)); fi
    if [[ $2 == nixferry* && $R_PROG != *nixferry* && -n $R_PROG ]]; then
        echo "  (the remote ran nix-store: nixferry used the serve protocol)"
    fi
}
ratio() { # what a b: a/b, or n/a
    if [[ -n ${2:-} && -n ${3:-} ]]; then awk "BEGIN{printf \"$1\", $2 / $3}"; else echo n/a; fi
}
header
: > "$work/table"
notes=()

if has "$cases" first-deploy; then
    for tool in $tools; do
        fresh
        copy "$tool" main "$work/store-1" "$gen1"
        $R_OK && { complete "$work/store-1" "$gen1" || R_OK=false; }
        row first-deploy "$tool"
    done
    notes+=("first-deploy: nixferry $(ratio '%.1fx' "${SECS[first-deploy/nix]:-}" "${SECS[first-deploy/nixferry]:-}") faster than Nix")
fi

if has "$cases" upgrade; then
    # Generation 1 goes into a store here, without the link, once; each
    # copy starts from a copy of that store.
    fresh
    nix copy --no-check-sigs --to "$work/gen1" "$gen1" 2>"$work/gen1.log" || { cat "$work/gen1.log"; exit 1; }
    upgrade() { # tool label [params]
        fresh
        cp -a "$work/gen1" "$work/store-1"
        copy "$1" main "$work/store-1" "$gen2" "${3:-}"
        $R_OK && { complete "$work/store-1" "$gen2" || R_OK=false; }
        row upgrade "$2"
    }
    for tool in $tools; do
        if [[ $tool == nixferry ]]; then
            upgrade nixferry nixferry
            upgrade nixferry nixferry-zstd delta=false
        else
            upgrade nix nix
        fi
    done
    rm -rf "$work/gen1"
    d=${BYTES[upgrade/nixferry]:-}; z=${BYTES[upgrade/nixferry-zstd]:-}
    notes+=("upgrade: nixferry bytes with deltas / zstd only: $(ratio '%.1f%%' "${d:+$((d * 100))}" "$z") (target <= 5%)")
    notes+=("upgrade: nixferry $(ratio '%.1fx' "${SECS[upgrade/nix]:-}" "${SECS[upgrade/nixferry]:-}") faster than Nix (target >= 10x)")
fi

if has "$cases" resume; then
    n=0
    for tool in $tools; do
        fresh
        copy "$tool" main "$work/store-1" "$bignar"
        $R_OK && { complete "$work/store-1" "$bignar" || R_OK=false; }
        row resume "$tool-uncut"
        $R_OK || continue
        full=$((R_UP + R_DOWN))
        # The cut: half the uncut copy's bytes up, on a new link.
        n=$((n + 1))
        start_link "cut-$n" --cut-after $((R_UP / 2))
        fresh
        copy "$tool" "cut-$n" "$work/store-1" "$bignar"
        after_cut=$R_AFTER_CUT
        if [[ -z $after_cut ]]; then
            echo "  the link did not cut $tool's copy"
        fi
        t_secs=$R_SECS t_up=$R_UP t_down=$R_DOWN t_cpu=$R_CPU t_rcpu=$R_RCPU t_prog=$R_PROG
        if $R_OK && [[ -n $after_cut ]]; then
            echo "  $tool: done in one run despite the cut (it tried again by itself)"
        fi
        label=$tool-cut
        if ! $R_OK; then
            # It failed at the cut: again, on the same link (which cuts once).
            echo "  $tool: copy again after the cut"
            label=$tool-cut+again
            copy "$tool" "cut-$n" "$work/store-1" "$bignar"
            t_secs=$(awk "BEGIN{print $t_secs + $R_SECS}")
            t_up=$((t_up + R_UP)) t_down=$((t_down + R_DOWN))
            t_cpu=$(awk "BEGIN{print $t_cpu + $R_CPU}") t_rcpu=$(awk "BEGIN{print $t_rcpu + $R_RCPU}")
            t_prog=$(printf '%s\n' "$t_prog" "$R_PROG" | tr + '\n' | sed '/^$/d' | sort -u | paste -sd+)
            after_cut=$R_AFTER_CUT
        fi
        stop_link "cut-$n"
        $R_OK && { complete "$work/store-1" "$bignar" || R_OK=false; }
        R_SECS=$t_secs R_UP=$t_up R_DOWN=$t_down R_CPU=$t_cpu R_RCPU=$t_rcpu R_PROG=$t_prog
        row resume "$label"
        if [[ -n $after_cut ]]; then
            target=; [[ $tool == nixferry ]] && target=' (target <= 55%)'
            notes+=("resume: $tool sent $(mb "$after_cut") MB after the cut, $(ratio '%.0f%%' $((after_cut * 100)) "$full") of an uncut copy$target")
        fi
    done
fi

echo
for note in "${notes[@]}"; do echo "$note"; done
