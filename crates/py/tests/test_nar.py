"""NAR: dump, read, restore, list and hash, against the test vectors and Nix."""

from __future__ import annotations

import io
import json
import os
import pathlib
import pwd
import shutil
import signal
import tempfile
import time
import warnings

import pytest

import nixferry
from nixferry import nar

from conftest import make_tree, source_tree

NAR_FILES = ["emptydir.nar", "hi-exec.nar", "hi.nar", "symlink.nar", "tree.nar"]


def nar_hashes(vectors: pathlib.Path) -> dict[str, tuple[int, str, str]]:
    out = {}
    for line in (vectors / "nar" / "nar-hashes.txt").read_text().splitlines():
        name, size, nix32, sri, _hex = line.split()
        out[name] = (int(size), nix32, sri)
    return out


@pytest.mark.parametrize("name", NAR_FILES)
def test_vector_hash_and_round_trip(vectors: pathlib.Path, name: str, tmp_path: pathlib.Path) -> None:
    path = vectors / "nar" / name
    size, nix32, sri = nar_hashes(vectors)[name]
    # From a path, from bytes and from a stream, the same summary.
    s = nar.validate(path)
    assert s.nar_size == size
    assert str(s.nar_hash) == nix32
    assert s.nar_hash.to_sri() == sri
    assert nar.validate(path.read_bytes()) == s
    with open(path, "rb") as f:
        assert nar.validate(f) == s
    # Restore, then dump again: the same bytes.
    dest = tmp_path / "out"
    assert nar.restore(path, dest) == s
    assert nar.dump_bytes(dest) == path.read_bytes()
    assert nar.hash_path(dest) == s


def test_dump_of_source_tree_is_tree_nar(vectors: pathlib.Path, tmp_path: pathlib.Path) -> None:
    tree = source_tree(tmp_path / "source-tree")
    want = (vectors / "nar" / "tree.nar").read_bytes()
    assert nar.dump_bytes(tree) == want
    out = tmp_path / "t.nar"
    assert nar.dump(tree, out) == len(want)
    assert out.read_bytes() == want
    assert nar.dump(os.fspath(tree), tmp_path / "t2.nar", sync=True) == len(want)
    buf = io.BytesIO()
    assert nar.dump(tree, buf) == len(want)
    assert buf.getvalue() == want
    assert b"".join(nar.dump_chunks(tree, 100)) == want
    assert all(len(c) == 100 for c in list(nar.dump_chunks(tree, 100))[:-1])


def test_listing_json_matches_nix(vectors: pathlib.Path) -> None:
    got = json.loads(nar.listing_json(vectors / "nar" / "tree.nar"))
    want = json.loads((vectors / "nar" / "tree.ls.json").read_text())
    assert got == want


def test_entries_of_tree(vectors: pathlib.Path) -> None:
    seen = []
    with nar.NarReader(vectors / "nar" / "tree.nar") as reader:
        for e in reader:
            data = e.read() if e.type == "regular" else None
            seen.append((e.path, e.type, e.size, e.executable, e.target, data))
        summary = reader.summary
    assert summary is not None
    assert str(summary.nar_hash) == "sha256:02399y2ql0y01nmfs8n5q3kjcs64gaiwdcvbj5sc6m8lm6km2f3d"
    assert seen == [
        ("", "directory", None, False, None, None),
        ("dir", "directory", None, False, None, None),
        ("dir/empty", "regular", 0, False, None, b""),
        ("dir/sub", "directory", None, False, None, None),
        ("dir/sub/deep.txt", "regular", 6, False, None, b"nested"),
        ("dir/sub/up", "symlink", None, False, "../../hello.txt", None),
        ("hello.txt", "regular", 6, False, None, b"hello\n"),
        ("link", "symlink", None, False, "hello.txt", None),
        ("run.sh", "regular", 18, True, None, b"#!/bin/sh\necho hi\n"),
    ]
    # The listing has the same entries, with the offsets of the .ls file.
    listed = nar.list(vectors / "nar" / "tree.nar")
    assert [e.path for e in listed] == [s[0] for s in seen]
    ls = json.loads((vectors / "nar" / "tree.ls.json").read_text())
    assert listed[-1].offset == ls["root"]["entries"]["run.sh"]["narOffset"]
    assert listed[-1].name == "run.sh" and listed[-1].depth == 1
    with pytest.raises(nixferry.NarError):
        listed[-1].read()


def test_streaming_contents_from_a_stream(tmp_path: pathlib.Path) -> None:
    tree = make_tree(tmp_path / "tree")
    data = nar.dump_bytes(tree)
    big = (tree / "big.bin").read_bytes()
    found = {}
    # Any binary stream, read in small pieces.
    for e in nar.entries(io.BufferedReader(io.BytesIO(data), buffer_size=7)):
        if e.name == "big.bin":
            with e.open() as f:
                parts = [f.read(1000), f.read(5)]
                parts.extend(f)
            found[e.path] = b"".join(parts)
        elif e.type == "regular":
            found[e.path] = e.read(3) + e.read()
        elif e.type == "symlink":
            found[e.path] = e.target_bytes
    assert found["big.bin"] == big
    assert found["hello.txt"] == b"hello\n"
    assert found["dangling"] == b"/nonexistent/target"
    assert found[os.fsdecode(b"raw\xff")] == b"non-utf8 name"
    assert os.fsencode(os.fsdecode(b"raw\xff")) == b"raw\xff"


def test_contents_of_a_past_entry_cannot_be_read(vectors: pathlib.Path) -> None:
    reader = nar.NarReader(vectors / "nar" / "tree.nar")
    entries = [next(reader) for _ in range(3)]
    assert entries[2].path == "dir/empty"
    next(reader)
    with pytest.raises(nixferry.NarError, match="moves on"):
        entries[2].read()
    with pytest.raises(nixferry.NarError, match="directory has no contents"):
        entries[0].read()
    reader.close()
    assert list(reader) == []


def test_restore_and_dump_round_trip_of_a_tricky_tree(tmp_path: pathlib.Path) -> None:
    tree = make_tree(tmp_path / "tree")
    data = nar.dump_bytes(tree)
    s = nar.restore(io.BytesIO(data), tmp_path / "copy")
    assert s.nar_size == len(data)
    assert nar.dump_bytes(tmp_path / "copy") == data
    assert os.readlink(tmp_path / "copy" / "dangling") == "/nonexistent/target"
    assert os.access(tmp_path / "copy" / "run.sh", os.X_OK)
    assert nar.cat(data, "dir/sub/deep.txt") == b"nested"
    assert nar.cat(data, b"/hello.txt") == b"hello\n"
    with pytest.raises(nixferry.NarPathNotFoundError):
        nar.cat(data, "nope")


def test_restore_overwrite(tmp_path: pathlib.Path, vectors: pathlib.Path) -> None:
    dest = tmp_path / "d"
    dest.mkdir()
    with pytest.raises(FileExistsError):
        nar.restore(vectors / "nar" / "hi.nar", dest)
    nar.restore(vectors / "nar" / "hi.nar", dest, overwrite=True)
    assert dest.read_bytes() == b"hi"


VALID = {"ok_basic", "case_pair_A_a", "name_high_bytes", "sort_bytewise_Z_a", "sort_bytewise_high", "top_symlink"}


def invalid_cases() -> list[str]:
    from conftest import VECTORS

    return sorted(p.stem for p in (VECTORS / "nar" / "invalid").glob("*.nar"))


@pytest.mark.parametrize("case", invalid_cases())
def test_invalid_nars_are_rejected(vectors: pathlib.Path, case: str, tmp_path: pathlib.Path) -> None:
    path = vectors / "nar" / "invalid" / f"{case}.nar"
    if case in VALID:
        nar.validate(path)
        nar.restore(path, tmp_path / "x")
        return
    with pytest.raises(nixferry.InvalidNarError) as info:
        nar.validate(path)
    err = info.value
    assert isinstance(err, nixferry.NarError) and isinstance(err, ValueError)
    assert isinstance(err.offset, int) and err.reason
    assert f"at byte {err.offset}" in str(err)
    # Restoring leaves nothing behind; iterating raises the same error.
    with pytest.raises(nixferry.InvalidNarError):
        nar.restore(path, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(nixferry.InvalidNarError):
        for _ in nar.NarReader(path):
            pass


def test_trailing_data_allowed_when_asked(vectors: pathlib.Path) -> None:
    data = (vectors / "nar" / "hi.nar").read_bytes()
    stream = io.BytesIO(data + b"rest")
    reader = nar.NarReader(stream, allow_trailing=True)
    assert [e.type for e in reader] == ["regular"]
    assert stream.read() == b"rest"
    with pytest.raises(nixferry.InvalidNarError, match="after the end"):
        list(nar.NarReader(data + b"rest"))


def test_os_errors(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError) as e:
        nar.dump_bytes(missing)
    assert e.value.filename == os.fspath(missing)
    with pytest.raises(FileNotFoundError):
        nar.hash_path(missing)
    with pytest.raises(FileNotFoundError):
        nar.NarReader(missing)
    with pytest.raises(FileNotFoundError):
        nar.dump(tmp_path, tmp_path / "no" / "such" / "dir.nar")
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0)
        try:
            with pytest.raises(PermissionError):
                nar.dump_bytes(locked)
        finally:
            locked.chmod(0o755)
    else:
        assert _dump_as_nobody_a_directory_nobody_may_read() == "PermissionError"
    sock_dir = tmp_path / "fifo"
    sock_dir.mkdir()
    os.mkfifo(sock_dir / "f")
    with pytest.raises(nixferry.NarError, match="unsupported type"):
        nar.dump_bytes(sock_dir)
    with pytest.raises(TypeError):
        nar.validate(42)  # type: ignore[arg-type]


def _dump_as_nobody_a_directory_nobody_may_read() -> str:
    """What ``nar.dump_bytes`` raises for the user nobody (root reads
    anything) on a directory of mode 0: in a child process that gives up
    root, and that is killed if it does not answer within two minutes."""
    nobody = pwd.getpwnam("nobody")
    outer = pathlib.Path(tempfile.mkdtemp())
    try:
        outer.chmod(0o755)
        locked = outer / "locked"
        locked.mkdir(mode=0)
        read_end, write_end = os.pipe()
        with warnings.catch_warnings():
            # Forking a process with threads: the child only calls nixferry.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            outcome = "nothing"
            try:
                os.setgroups([])
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
                nar.dump_bytes(locked)
            except BaseException as e:
                outcome = type(e).__name__
            finally:
                os.write(write_end, outcome.encode())
                os._exit(0)
        os.close(write_end)
        deadline = time.monotonic() + 120
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError("the child running as nobody hung")
            time.sleep(0.01)
        with os.fdopen(read_end, "rb") as r:
            return r.read().decode()
    finally:
        shutil.rmtree(outer)


def test_stream_exceptions_propagate(tmp_path: pathlib.Path) -> None:
    class Boom(Exception):
        pass

    class Writer:
        def write(self, data: bytes) -> int:
            raise Boom("disk on fire")

    class Reader:
        def read(self, n: int) -> bytes:
            raise Boom("cable cut")

    tree = make_tree(tmp_path / "tree")
    with pytest.raises(Boom, match="disk on fire"):
        nar.dump(tree, Writer())
    with pytest.raises(Boom, match="cable cut"):
        nar.validate(Reader())
    with pytest.raises(Boom):
        list(nar.NarReader(Reader()))


def test_dump_matches_nix_store_dump(nix: object, tmp_path: pathlib.Path) -> None:
    tree = make_tree(tmp_path / "tree")
    want = nix("nix-store", "--dump", tree)  # type: ignore[operator]
    assert nar.dump_bytes(tree) == want
    out = tmp_path / "ours.nar"
    nar.dump(tree, out)
    assert out.read_bytes() == want
    # Nix's hash of the path agrees, and Nix restores what we wrote.
    assert str(nar.hash_path(tree).nar_hash.to_sri()) == nix(  # type: ignore[operator]
        "nix", "hash", "path", tree
    ).decode().strip()
    nix("nix-store", "--restore", tmp_path / "restored", input=want)  # type: ignore[operator]
    assert nar.dump_bytes(tmp_path / "restored") == want
    # Entries read from Nix's NAR are the tree's.
    names = {e.path for e in nar.NarReader(want)}
    assert {"hello.txt", "dir/sub/deep.txt", "dangling", os.fsdecode(b"raw\xff")} <= names
