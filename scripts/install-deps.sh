#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine that has only
# Rust and Python: Nix 2.8 (Debian's nix-bin) as the reference implementation.
set -euo pipefail

need=()
command -v nix-store >/dev/null 2>&1 || need+=(nix-bin)

if [ ${#need[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing: ${need[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
