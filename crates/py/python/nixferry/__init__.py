r"""nixferry: move Nix store closures around, from Python.

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
  ``nixferry serve`` does, for as long as a ``with`` block lasts;
- :mod:`nixferry.cache`: verify, repair, re-sign, pin and collect the
  garbage of a binary cache, as ``nixferry cache`` does;
- :mod:`nixferry.errors`: the exceptions, all :class:`NixferryError`.

Calls that do I/O or heavy work release the GIL, and Ctrl-C interrupts
them.

Examples
--------

The examples build on each other, in a temporary directory; none needs
Nix.

Dump a tree as a NAR, and hash it:

>>> import pathlib, tempfile
>>> import nixferry
>>> from nixferry import nar, store_path
>>> tmp = pathlib.Path(tempfile.mkdtemp())
>>> tree = tmp / "hello"
>>> tree.mkdir()
>>> _ = (tree / "hello.txt").write_text("hello\n")
>>> nar.dump(tree, tmp / "hello.nar")  # as nix-store --dump; returns the size
296
>>> summary = nar.hash_path(tree)  # the same NAR, hashed without being kept
>>> summary.nar_size, str(summary.nar_hash)
(296, 'sha256:01ck5rvyzqybzm60d7600qxnf699pxcdy4743f8li7mb5y0ckn4b')
>>> nar.validate(tmp / "hello.nar") == summary
True

Sign a narinfo, then verify it as a client of the cache does, against
its trusted public keys:

>>> key = nixferry.SigningKey.generate("cache.example.org-1")
>>> trusted = [str(key.verifying_key)]  # as in trusted-public-keys
>>> hello = store_path.add_path(tree)  # the path nix-store --add gives
>>> hello
StorePath('/nix/store/5caih9r8fpx2izlf9ndymqjy3ym9j37p-hello')
>>> url = f"nar/{summary.nar_hash.to_nix32()}.nar"  # where the cache keeps the NAR
>>> info = nixferry.NarInfo(hello, url, summary.nar_hash, summary.nar_size)
>>> info.sign(key)
>>> text = info.render()  # what the cache serves as <hash part>.narinfo
>>> nixferry.NarInfo.parse(text).verify(trusted)
'cache.example.org-1'
>>> nixferry.NarInfo.parse(text).verify(
...     ["cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="]
... )
Traceback (most recent call last):
    ...
nixferry.errors.VerificationError: not signed by a trusted key (signed by cache.example.org-1)

Compute a closure. Opening a ``file://`` cache writes nothing (the first
path a store writes lays the cache out). Without Nix at hand, ``publish``
fills one in the layout Nix writes (a NAR file named by its hash, and a
signed narinfo), with ``hello`` and a text file that refers to it:

>>> cache_dir = tmp / "cache"
>>> cache = nixferry.open_store(f"file://{cache_dir}")
>>> def publish(src, path, references):
...     (cache_dir / "nar").mkdir(parents=True, exist_ok=True)
...     s = nar.hash_path(src)
...     url = f"nar/{s.nar_hash.to_nix32()}.nar"
...     _ = nar.dump(src, cache_dir / url)
...     info = nixferry.NarInfo(path, url, s.nar_hash, s.nar_size, references=references)
...     info.sign(key)
...     _ = (cache_dir / f"{path.hash_part}.narinfo").write_text(info.render())
>>> publish(tree, hello, [])
>>> contents = f"{hello}/hello.txt\n".encode()
>>> greeting = store_path.text_path("greeting", contents, references=[hello])
>>> _ = (tmp / "greeting").write_bytes(contents)
>>> publish(tmp / "greeting", greeting, references=[hello])
>>> for info in cache.closure([greeting]):  # references first
...     print(info.path, info.nar_size)
/nix/store/5caih9r8fpx2izlf9ndymqjy3ym9j37p-hello 296
/nix/store/zr37s7fvpkamgn2hb2dhh49pk7sfrvvm-greeting 176

Copy that closure to a second cache, compressed with zstd. The copy
trusts paths signed by a trusted key:

>>> mirror = f"file://{tmp}/mirror?compression=zstd"
>>> result = nixferry.copy(cache, mirror, [greeting], trusted_keys=trusted)
>>> result.copied, result.skipped, result.is_complete
(2, 0, True)
>>> nixferry.copy(cache, mirror, [greeting], trusted_keys=trusted).skipped
2

Serve the cache over HTTP, and copy from it as from any binary cache:

>>> import urllib.request
>>> with nixferry.serve(cache, listen="127.0.0.1:0") as server:
...     with urllib.request.urlopen(f"{server.url}/nix-cache-info") as response:
...         print(response.read().decode(), end="")
...     result = nixferry.copy(
...         server.url, f"file://{tmp}/from-http", [greeting], trusted_keys=trusted
...     )
StoreDir: /nix/store
>>> result.copied, server.closed
(2, True)
"""

from __future__ import annotations

import json as _json
from collections.abc import Iterable as _Iterable
from typing import Any as _Any

from . import _native, errors, hash, nar, store_path
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
    PathFoundUpstream,
    PathInfo,
    PathSkipped,
    PathStarted,
    Server,
    SigningKey,
    Store,
    StorePath,
    UpstreamFailed,
    VerifyingKey,
    __version__,
    copy,
    open_store,
    serve,
)
from .errors import (
    CacheError,
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
    | PathFoundUpstream
    | UpstreamFailed
    | CopyRetrying
    | PathFailed
    | DestinationFailed
)
"""Any event a :func:`copy` passes to its ``progress`` callback."""



def check(
    src: Store | str,
    dsts: _Iterable[str],
    paths: str | StorePath | _Iterable[str | StorePath],
    *,
    substitute: bool = False,
    secret_keys: list[SigningKey] | None = None,
    timeout: float = 60.0,
) -> list[dict[str, _Any]]:
    """Checks each destination of a copy before any byte moves, as
    ``nixferry check`` does: which of the closure of ``paths`` (in
    ``src``) it has, and, by kind of store, the login and remote Nix
    version (``ssh://``), free space against the NAR bytes it lacks,
    ``nix-cache-info`` and write access (binary caches), the keys that
    will sign (``secret_keys``), and with ``substitute`` what the host's
    own substituters would give it with a signature it trusts.

    All destinations (URLs) are checked at once, each within ``timeout``
    seconds. Returns one report per destination, in order, as
    ``nixferry check --json`` prints them: ``"ok"`` says whether the copy
    would go through, ``"checks"`` lists each check with its ``"status"``
    (``ok``, ``warn`` or ``fail``) and ``"message"``. A destination that
    fails is a report, never an exception; :class:`ClosureError` or
    :class:`PathNotFoundError` is raised when the closure cannot be
    computed on the source.
    """
    reports: list[dict[str, _Any]] = _json.loads(
        _native.check_json(
            src, list(dsts), paths, substitute=substitute, secret_keys=secret_keys, timeout=timeout
        )
    )
    return reports


def nix_config(options: _Iterable[tuple[str, str]] = ()) -> dict[str, dict[str, _Any]]:
    """Nix's effective configuration for the settings nixferry uses.

    Read as Nix reads it (``$NIX_CONF_DIR/nix.conf``, the user's files,
    ``NIX_CONFIG``, includes, ``extra-`` settings), with ``options``,
    ``(name, value)`` pairs, applied last as ``nix --option`` does. Each
    of ``trusted-public-keys``, ``secret-key-files``, ``substituters``,
    ``trusted-substituters``, ``netrc-file`` and ``connect-timeout`` maps
    to ``{"value": ..., "origins": [...]}``: a list of words (a string for
    ``netrc-file``, an int for ``connect-timeout``), and where each part
    was set (``path:line``, ``NIX_CONFIG:line``, ``--option`` or
    ``default``), as ``nixferry config --json`` prints them.

    Raises :class:`NixferryError` for a file that does not parse or a bad
    option.
    """
    pairs = [(str(name), str(value)) for name, value in options]
    result: dict[str, dict[str, _Any]] = _json.loads(_native.nix_config_json(pairs))
    return result


__all__ = [
    "BytesCopied",
    "CacheError",
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
    "PathFoundUpstream",
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
    "UpstreamFailed",
    "VerificationError",
    "VerifyingKey",
    "__version__",
    "check",
    "copy",
    "errors",
    "hash",
    "nar",
    "nix_config",
    "open_store",
    "serve",
    "store_path",
]
