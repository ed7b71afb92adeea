#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine that has only
# Rust and Python: Nix 2.8 (Debian's nix-bin) as the reference implementation,
# OpenSSH (server and client) for the tests that start their own sshd on
# 127.0.0.1, what Python needs to make the virtualenv the Python package's
# tests run in, a C++ compiler for the fuzz targets' libFuzzer, and the
# toolchain's clippy and rustfmt. No system-wide sshd is started: the tests
# run their own.
set -euo pipefail

need=()
command -v nix-store >/dev/null 2>&1 || need+=(nix-bin)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
{ command -v ssh && command -v ssh-keygen; } >/dev/null 2>&1 || need+=(openssh-client)
# Debian's own python3 makes virtualenvs only with python3-venv.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
# The fuzz targets link libFuzzer, which is C++.
command -v c++ >/dev/null 2>&1 || need+=(g++)

if [ ${#need[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing: ${need[*]}" >&2

    # Keep the packages' maintainer scripts from starting services (such as
    # sshd on port 22): invoke-rc.d and deb-systemd-invoke skip a start when
    # policy-rc.d exits with 101. An existing policy is left as it is; one
    # added here is removed again on exit.
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
        $sudo chmod 755 "$policy"
        trap '$sudo rm -f "$policy"' EXIT
    fi

    $sudo apt-get update -qq
    # `env` so that the setting survives sudo's environment reset.
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${need[@]}" >/dev/null
fi

# The checks need clippy and rustfmt, which a minimal toolchain lacks.
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
