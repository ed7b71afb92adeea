"""The exceptions nixferry raises.

Every error of nixferry's own is a :class:`NixferryError`. Errors of the
operating system on a named file are the built-in ``OSError`` subclasses
(``FileNotFoundError``, ``PermissionError``, ``FileExistsError``, ...) with
``errno`` and ``filename`` set, as ``open()`` raises them.

Errors caused by bad input data (an invalid NAR, a malformed narinfo, a
bad hash) also derive from ``ValueError``.

>>> import nixferry
>>> try:
...     nixferry.NarInfo.parse("StorePath: nowhere\\n")
... except nixferry.NarInfoError as e:
...     print(type(e).__name__)
NarInfoError
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._native import CopySummary

__all__ = [
    "NixferryError",
    "HashError",
    "StorePathError",
    "NarError",
    "InvalidNarError",
    "NarPathNotFoundError",
    "NarInfoError",
    "SignatureError",
    "VerificationError",
    "StoreError",
    "StoreUrlError",
    "StoreConnectionError",
    "PathNotFoundError",
    "ClosureError",
    "CopyError",
    "CacheError",
]


class NixferryError(Exception):
    """The base class of every nixferry error."""


class HashError(NixferryError, ValueError):
    """A hash could not be parsed or made."""


class StorePathError(NixferryError, ValueError):
    """A store path or store path name is invalid."""


class NarError(NixferryError):
    """A NAR could not be read, written or restored."""


class InvalidNarError(NarError, ValueError):
    """The NAR data breaks a rule of the format.

    ``offset`` is the byte offset of the offending token, ``path`` the
    entry being read (raw bytes, ``b""`` for the root), and ``reason``
    what is wrong.
    """

    offset: int = 0
    path: bytes = b""
    reason: str = ""


class NarPathNotFoundError(NarError, LookupError):
    """The NAR has no entry at ``path`` (raw bytes)."""

    path: bytes = b""


class NarInfoError(NixferryError, ValueError):
    """A narinfo is malformed, or its fields do not agree."""


class SignatureError(NixferryError):
    """A key or signature is malformed, or a key cannot be made."""


class VerificationError(SignatureError):
    """No signature verified.

    ``reason`` is ``"no-signatures"``, ``"untrusted-keys"``,
    ``"bad-signature"`` (a trusted key's signature does not match: the data
    was altered) or ``"unnamed"``; ``key_names`` names the keys involved.
    """

    reason: str = ""
    key_names: list[str] = []


class StoreError(NixferryError):
    """A store failed."""


class StoreUrlError(StoreError, ValueError):
    """A store URL is malformed or names an unknown scheme or parameter."""


class StoreConnectionError(StoreError):
    """A remote store could not be reached or logged into."""


class PathNotFoundError(StoreError, LookupError):
    """The store does not have ``path`` (a full store path)."""

    path: str = ""


class ClosureError(StoreError):
    """A closure cannot be computed: a reference is missing, or a cycle."""


class CacheError(NixferryError):
    """A cache operation cannot run: a pin name or pin file is bad, a
    path to pin is not in the cache, or a gc would keep nothing."""


class CopyError(NixferryError):
    """Paths failed to copy; ``failed`` lists ``(path, reason)`` pairs, and
    ``summary`` is the :class:`CopySummary` of the copy (what was copied
    too)."""

    failed: list[tuple[str, str]] = []
    summary: CopySummary | None = None
