"""Shared fixtures: the test vectors, and Nix for the differential tests."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]

NIX_CONFIG = (
    "experimental-features = nix-command\n"
    "sandbox = false\n"
    "build-users-group =\n"
    "substituters ="
)


def _shared() -> pathlib.Path:
    env = os.environ.get("NIXFERRY_SHARED")
    if env:
        return pathlib.Path(env)
    for c in (REPO.parent / "shared", REPO / "shared"):
        if (c / "vectors").is_dir():
            return c
    raise RuntimeError("cannot find shared/ with the test vectors; set NIXFERRY_SHARED")


SHARED = _shared()
VECTORS = SHARED / "vectors"
TESTDATA = SHARED / "testdata"


@pytest.fixture
def vectors() -> pathlib.Path:
    return VECTORS


def have_nix() -> bool:
    """Whether Nix is here; with NIXFERRY_REQUIRE_NIX set, its absence fails
    the test instead of skipping it."""
    if shutil.which("nix-store") and shutil.which("nix"):
        return True
    if os.environ.get("NIXFERRY_REQUIRE_NIX"):
        pytest.fail("Nix is required (NIXFERRY_REQUIRE_NIX is set) but not installed")
    return False


@pytest.fixture
def nix() -> object:
    """Runs a Nix command with the test configuration; skips without Nix."""
    if not have_nix():
        pytest.skip("Nix is not installed")

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


def source_tree(vectors: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
    """A copy of ``vectors/nar/source-tree`` as Nix saw it: the vectors keep
    its two symlinks as regular files holding their targets."""
    shutil.copytree(vectors / "nar" / "source-tree", dest, symlinks=True)
    for link in ("link", "dir/sub/up"):
        p = dest / link
        target = p.read_text()
        p.chmod(0o644)
        p.parent.chmod(0o755)
        p.unlink()
        p.symlink_to(target)
    return dest
