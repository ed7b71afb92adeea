#!/usr/bin/env python3
"""The Python bindings against the command-line tool on the same data.

Measures, best of several runs each:

- dumping a large tree as a NAR to a file
  (`nixferry nar dump TREE -o FILE` against `nixferry.nar.dump(TREE, FILE, sync=True)`,
  both flushing the file to disk);
- reading every entry of the resulting NAR
  (`nixferry nar ls FILE` against iterating `nixferry.nar.NarReader(FILE)`),

and prints the times and the ratio Python / CLI (1.00 = as fast).

Usage: benches/python-vs-cli.py [--size-mib N] [--runs N]
Needs the release CLI (`cargo build --release -p nixferry-cli`) and the
package installed (`pip install ./crates/py`).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import random
import subprocess
import sys
import time

import nixferry.nar

ROOT = pathlib.Path(__file__).resolve().parent.parent


def make_tree(root: pathlib.Path, size_mib: int) -> None:
    """Source-tree-like data: many small files, some large ones, symlinks."""
    if (root / ".done").exists():
        return
    rng = random.Random(1)
    total = 0
    n = 0
    while total < size_mib << 20:
        d = root / f"d{n % 97:02}" / f"s{n % 13}"
        d.mkdir(parents=True, exist_ok=True)
        size = rng.choice([100, 2000, 9000, 40000]) if n % 50 else rng.choice([1 << 20, 8 << 20])
        (d / f"f{n}").write_bytes(rng.randbytes(size))
        if n % 40 == 0:
            (d / f"l{n}").symlink_to(f"f{n}")
        total += size
        n += 1
    (root / ".done").write_bytes(b"")


def best(runs: int, f: object) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        f()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    cli = ROOT / "target" / "release" / "nixferry"
    if not cli.exists():
        print(f"build the CLI first: cargo build --release -p nixferry-cli", file=sys.stderr)
        return 2
    work = ROOT / "target" / "bench-data" / "python-vs-cli"
    tree = work / f"tree-{args.size_mib}"
    tree.mkdir(parents=True, exist_ok=True)
    make_tree(tree, args.size_mib)
    cli_nar = work / "cli.nar"
    py_nar = work / "py.nar"

    def cli_dump() -> None:
        subprocess.run([cli, "nar", "dump", tree, "-o", cli_nar], check=True)

    def py_dump() -> None:
        nixferry.nar.dump(tree, py_nar, sync=True)

    def cli_ls() -> None:
        subprocess.run([cli, "nar", "ls", cli_nar], check=True, stdout=subprocess.DEVNULL)

    def py_ls() -> None:
        for _ in nixferry.nar.NarReader(py_nar):
            pass

    rows = []
    for name, c, p in [("dump to file", cli_dump, py_dump), ("iterate entries", cli_ls, py_ls)]:
        # Alternate, so that both see the same machine load.
        c()
        p()
        tc = best(args.runs, c)
        tp = best(args.runs, p)
        rows.append((name, tc, tp))
    assert cli_nar.read_bytes() == py_nar.read_bytes(), "the two NARs differ"
    entries = sum(1 for _ in nixferry.nar.NarReader(py_nar))
    print(f"tree: {args.size_mib} MiB, NAR {py_nar.stat().st_size >> 20} MiB, {entries} entries")
    print(f"{'':16} {'CLI s':>8} {'Python s':>9} {'ratio':>6}")
    for name, tc, tp in rows:
        print(f"{name:16} {tc:8.3f} {tp:9.3f} {tp / tc:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
