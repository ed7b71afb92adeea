"""nixferry: move Nix store closures around, from Python.

The core of the ``nixferry`` Rust library:

- :mod:`nixferry.nar`: dump trees as NARs, read NAR entries as a stream,
  restore, list and hash;
- :mod:`nixferry.store_path` and :mod:`nixferry.hash`: store paths and
  Nix hashes;
- :class:`NarInfo`, :class:`SigningKey`, :class:`VerifyingKey`: binary
  cache metadata, signed and verified as Nix does;
- :func:`open_store` and :func:`copy`: stores by URL (``local``,
  ``file:///dir``, ``ssh://host``) and closure copies between them;
- :func:`serve`: a store served as a binary cache over HTTP, as
  ``nixferry serve`` does, for as long as a ``with`` block lasts::

      with nixferry.serve("file:///srv/cache", listen="127.0.0.1:0") as server:
          nixferry.copy(server.url, "file:///tmp/mirror", paths)

- :mod:`nixferry.errors`: the exceptions, all :class:`NixferryError`.

Calls that do I/O or heavy work release the GIL, and Ctrl-C interrupts
them.

>>> import nixferry
>>> key = nixferry.SigningKey.generate("example-1")
>>> info = nixferry.NarInfo(
...     "/nix/store/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt",
...     "nar/x.nar",
...     nixferry.NixHash.parse("sha256:1z63q11s9hppsav4x9kh767bqr7ypmw7ncg3wjncgs4lijvx8li2"),
...     120,
... )
>>> info.sign(key)
>>> info.verify([key.verifying_key])
'example-1'
"""

from __future__ import annotations

from . import errors, hash, nar, store_path
from ._native import (
    BytesCopied,
    CopyPlanned,
    CopyRetrying,
    CopySummary,
    DestinationFailed,
    NarInfo,
    NixHash,
    PathCopied,
    PathFailed,
    PathInfo,
    PathSkipped,
    PathStarted,
    Server,
    SigningKey,
    Store,
    StorePath,
    VerifyingKey,
    __version__,
    copy,
    open_store,
    serve,
)
from .errors import (
    ClosureError,
    CopyError,
    HashError,
    InvalidNarError,
    NarError,
    NarInfoError,
    NarPathNotFoundError,
    NixferryError,
    PathNotFoundError,
    SignatureError,
    StoreConnectionError,
    StoreError,
    StorePathError,
    StoreUrlError,
    VerificationError,
)

CopyEvent = (
    CopyPlanned
    | PathStarted
    | BytesCopied
    | PathCopied
    | PathSkipped
    | CopyRetrying
    | PathFailed
    | DestinationFailed
)
"""Any event a :func:`copy` passes to its ``progress`` callback."""

__all__ = [
    "BytesCopied",
    "ClosureError",
    "CopyError",
    "CopyEvent",
    "CopyPlanned",
    "CopyRetrying",
    "CopySummary",
    "DestinationFailed",
    "HashError",
    "InvalidNarError",
    "NarError",
    "NarInfo",
    "NarInfoError",
    "NarPathNotFoundError",
    "NixHash",
    "NixferryError",
    "PathCopied",
    "PathFailed",
    "PathInfo",
    "PathNotFoundError",
    "PathSkipped",
    "PathStarted",
    "Server",
    "SignatureError",
    "SigningKey",
    "Store",
    "StoreConnectionError",
    "StoreError",
    "StorePath",
    "StorePathError",
    "StoreUrlError",
    "VerificationError",
    "VerifyingKey",
    "__version__",
    "copy",
    "errors",
    "hash",
    "nar",
    "open_store",
    "serve",
    "store_path",
]
