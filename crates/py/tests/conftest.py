"""Common fixtures: the test vectors, and Nix for the differential tests."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
from typing import NoReturn

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]

NIX_CONFIG = (
    "experimental-features = nix-command\n"
    "sandbox = false\n"
    "build-users-group =\n"
    "substituters =\n"
    # No narinfos from Nix's disk cache, which is keyed by the cache URL: a
    # test server may get a port an earlier one had.
    "narinfo-cache-positive-ttl = 0\n"
    "narinfo-cache-negative-ttl = 0"
)


TESTDATA = REPO / "testdata"
VECTORS = TESTDATA / "vectors"


@pytest.fixture
def vectors() -> pathlib.Path:
    return VECTORS


@pytest.fixture
def signed_cache(tmp_path: pathlib.Path) -> pathlib.Path:
    """A writable copy of the signed xz cache of the test vectors (opening
    a cache may write its nix-cache-info)."""
    dst = tmp_path / "signed-xz"
    shutil.copytree(VECTORS / "binary-cache" / "signed-xz", dst)
    return dst


def required() -> bool:
    """Whether every test must run: in CI, or when NIXFERRY_REQUIRE_NIX is
    set (the test command sets it). A test that lacks what it needs then
    fails instead of skipping."""
    return any(os.environ.get(var) for var in ("CI", "NIXFERRY_REQUIRE_NIX"))


def skip(what: str) -> NoReturn:
    """Skips the test for want of ``what``; fails it when :func:`required`."""
    if required():
        pytest.fail(f"{what}: the test cannot run, and CI or NIXFERRY_REQUIRE_NIX is set")
    pytest.skip(what)


def have_nix() -> bool:
    """Whether Nix is here."""
    return bool(shutil.which("nix-store") and shutil.which("nix"))


@pytest.fixture
def nix() -> object:
    """Runs a Nix command with the test configuration; skips without Nix."""
    if not have_nix():
        skip("Nix is not installed")

    def run(*args: str | os.PathLike[str], input: bytes | None = None) -> bytes:
        env = dict(os.environ, NIX_CONFIG=NIX_CONFIG)
        out = subprocess.run(
            [os.fspath(a) for a in args],
            env=env,
            input=input,
            capture_output=True,
            check=False,
        )
        if out.returncode != 0:
            raise AssertionError(
                f"{args} failed ({out.returncode}): {out.stderr.decode(errors='replace')}"
            )
        return out.stdout

    return run


def make_tree(root: pathlib.Path) -> pathlib.Path:
    """A tree with the cases that matter to NAR writers."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "empty").write_bytes(b"")
    (root / "dir" / "sub" / "deep.txt").write_bytes(b"nested")
    (root / "emptydir").mkdir()
    (root / "hello.txt").write_bytes(b"hello\n")
    run = root / "run.sh"
    run.write_bytes(b"#!/bin/sh\necho hi\n")
    run.chmod(0o755)
    (root / "link").symlink_to("hello.txt")
    (root / "dangling").symlink_to("/nonexistent/target")
    (root / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (root / "Zeta").write_bytes(b"capital")
    (root / os.fsdecode(b"caf\xc3\xa9")).write_bytes(b"utf8 name")
    (root / os.fsdecode(b"raw\xff")).write_bytes(b"non-utf8 name")
    return root


# ``vectors/nar/source-tree``, the tree Nix dumped as ``tree.nar``, as its
# README lists it: files with their contents and mode, symlinks with their
# targets.
SOURCE_TREE_FILES = {
    "dir/empty": (b"", 0o644),
    "dir/sub/deep.txt": (b"nested", 0o644),
    "hello.txt": (b"hello\n", 0o644),
    "run.sh": (b"#!/bin/sh\necho hi\n", 0o755),
}
SOURCE_TREE_SYMLINKS = {
    "dir/sub/up": "../../hello.txt",
    "link": "hello.txt",
}


def source_tree(dest: pathlib.Path) -> pathlib.Path:
    """Builds the input of ``tree.nar`` at ``dest``, from the lists above
    rather than from the checkout, which may hold the symlinks as files."""
    for rel, (contents, mode) in SOURCE_TREE_FILES.items():
        p = dest / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(contents)
        p.chmod(mode)
    for rel, target in SOURCE_TREE_SYMLINKS.items():
        p = dest / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.symlink_to(target)
    return dest
