"""The NAR (Nix ARchive) format: dump, read, restore, list and hash.

A NAR serialises one file-system object (a regular file, a symlink or a
directory tree) canonically, as ``nix-store --dump`` writes it. Reading is
strict: only the canonical form is accepted, and errors say at which byte
offset and in which entry the archive breaks the format
(:class:`~nixferry.errors.InvalidNarError`).

Every function here runs with the GIL released (but when it reads from or
writes to a Python stream), so several threads can work at once, and
Ctrl-C interrupts it.

>>> import io, pathlib, tempfile
>>> tree = pathlib.Path(tempfile.mkdtemp())
>>> _ = (tree / "hello.txt").write_text("hello\\n")
>>> buf = io.BytesIO()
>>> size = dump(tree, buf)
>>> _ = buf.seek(0)
>>> for entry in NarReader(buf):
...     print(repr(entry.path), entry.type, entry.read() if entry.type == "regular" else "")
'' directory 
'hello.txt' regular b'hello\\n'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._native import (
    DumpChunks,
    NarContents,
    NarEntry,
    NarReader,
    NarSummary,
    cat,
    dump,
    dump_bytes,
    dump_chunks,
    hash_path,
    list,
    listing_json,
    restore,
    validate,
)

if TYPE_CHECKING:
    from ._native import _Source

__all__ = [
    "DumpChunks",
    "NarContents",
    "NarEntry",
    "NarReader",
    "NarSummary",
    "cat",
    "dump",
    "dump_bytes",
    "dump_chunks",
    "entries",
    "hash_path",
    "list",
    "listing_json",
    "restore",
    "validate",
]


def entries(source: _Source, *, allow_trailing: bool = False) -> NarReader:
    """Iterates over the entries of the NAR in ``source``.

    The same as ``NarReader(source, allow_trailing=allow_trailing)``:
    ``source`` is a file path, ``bytes``, or a readable binary stream.
    """
    return NarReader(source, allow_trailing=allow_trailing)
