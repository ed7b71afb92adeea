"""Looking after a binary cache: verify, repair, re-sign, count, pin and
collect garbage, as ``nixferry cache`` does.

Each function takes the cache's URL (``file:///dir``, ``s3://bucket``, or
``http(s)://…`` for :func:`verify` with paths), runs with the GIL
released, and returns the report ``nixferry cache … --json`` prints, as
a dict (field names are camelCase, as in ``nix path-info --json``).

Pins record deployed generations in the cache itself
(``nixferry/pins/<name>.json``); :func:`gc` keeps the closures of each
pin's last generations and of recent uploads, and deletes the rest,
narinfo first, so that the cache never advertises a path it cannot serve.

>>> import pathlib, tempfile
>>> import nixferry
>>> from nixferry import cache
>>> tmp = pathlib.Path(tempfile.mkdtemp())
>>> key = nixferry.SigningKey.generate("cache.example.org-1")
>>> store = nixferry.open_store(f"file://{tmp}/cache")
>>> (tmp / "site").mkdir()
>>> _ = (tmp / "site" / "index.html").write_text("hello\\n")
>>> site = store.add(tmp / "site", secret_keys=[key]).path
>>> (tmp / "old").mkdir()
>>> old = store.add(tmp / "old", secret_keys=[key]).path
>>> url = f"file://{tmp}/cache"
>>> cache.verify(url, trusted_keys=[key.verifying_key])["clean"]
True
>>> cache.pin(url, "web", [site])["generations"][0]["generation"]
1
>>> report = cache.gc(url, grace=0)  # nothing is young enough to keep
>>> [d["path"] for d in report["deleted"] if d["kind"] == "path"] == [old]
True
>>> cache.stats(url)["paths"], cache.stats(url)["pins"]
(1, 1)
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from . import _native
from ._native import SigningKey, Store, StorePath, VerifyingKey

__all__ = ["gc", "pin", "pins", "sign", "stats", "unpin", "verify"]

_Paths = str | StorePath | Iterable[str | StorePath]
_Keys = str | VerifyingKey | Iterable[str | VerifyingKey]


def verify(
    url: str,
    paths: _Paths | None = None,
    *,
    trusted_keys: _Keys | None = None,
    jobs: int | None = None,
    grace: float = 3600.0,
    upstreams: list[Store | str] | None = None,
    repair_from: Store | str | None = None,
    delete_broken: bool = False,
) -> dict[str, Any]:
    """Checks every narinfo of the cache (or the closures of ``paths``):
    it parses, is signed by one of ``trusted_keys`` (default: Nix's
    cache.nixos.org-1), its NAR file is there with its FileSize and
    FileHash and holds a NAR of its NarSize and NarHash, its references
    are in the cache (or in one of ``upstreams``), its listing is right;
    and NAR files no narinfo names and leftover temporary files older
    than ``grace`` seconds.

    Returns ``{"narinfos", "narFiles", "bytesRead", "clean", "problems":
    [{"kind", "path", "key", "message", "reference", "narFile"}]}``. With
    ``repair_from`` (a store), broken and missing paths are copied again
    from it; with ``delete_broken``, broken paths that are not repaired
    are deleted (narinfo first); the report is then of the cache after
    that, with ``"repair"``: ``{"repaired", "deleted", "unrepaired"}``.
    """
    return json.loads(
        _native.cache_verify(
            url,
            paths,
            trusted_keys=trusted_keys,
            jobs=jobs,
            grace=grace,
            upstreams=upstreams,
            repair_from=repair_from,
            delete_broken=delete_broken,
        )
    )


def sign(
    url: str,
    secret_keys: list[SigningKey],
    *,
    remove_signatures_by: list[str] | None = None,
    trusted_keys: _Keys | None = None,
) -> dict[str, Any]:
    """Signs every narinfo with ``secret_keys`` (key rotation), removing
    the signatures by the keys named in ``remove_signatures_by``; with
    ``trusted_keys``, only narinfos that carry a valid signature by one of
    them are signed. Each narinfo is replaced whole. Returns
    ``{"narinfos", "rewritten", "unchanged", "untrusted", "failed"}``."""
    return json.loads(
        _native.cache_sign(
            url,
            secret_keys,
            remove_signatures_by=remove_signatures_by,
            trusted_keys=trusted_keys,
        )
    )


def stats(url: str) -> dict[str, Any]:
    """What the cache holds: ``{"paths", "unreadable", "narBytes",
    "storedBytes", "narDirBytes", "compressionRatio", "unsigned",
    "pins"}``."""
    return json.loads(_native.cache_stats(url))


def pin(url: str, name: str, paths: _Paths, *, keep: int | None = None) -> dict[str, Any]:
    """Records a new generation of the pin ``name`` holding ``paths``
    (which must be in the cache), keeping the last ``keep`` generations
    (default 3, or what the pin had). Returns the pin: ``{"name", "keep",
    "generations": [{"generation", "time", "paths", "kept"}]}``."""
    return json.loads(_native.cache_pin(url, name, paths, keep=keep))


def pins(url: str) -> list[dict[str, Any]]:
    """Every pin, as :func:`pin` returns them, each generation with its
    closure's size: ``closurePaths``, ``closureNarSize``,
    ``closureFileSize``, ``missingPaths``."""
    return json.loads(_native.cache_pins(url))


def unpin(url: str, name: str, *, generation: int | None = None) -> None:
    """Removes the pin ``name``, or only its generation ``generation``."""
    _native.cache_unpin(url, name, generation=generation)


def gc(
    url: str,
    *,
    keep_newer_than: float | None = None,
    max_size: int | None = None,
    grace: float = 3600.0,
    dry_run: bool = False,
    jobs: int = 16,
) -> dict[str, Any]:
    """Deletes what neither a pin nor ``keep_newer_than`` (seconds) keeps,
    then, with ``max_size`` (bytes), the least recently uploaded unpinned
    paths until the cache fits; never a file younger than ``grace``
    seconds. With ``dry_run``, only says what it would delete. Raises
    :class:`~nixferry.errors.CacheError` for a cache without pins when
    neither ``keep_newer_than`` nor ``max_size`` is given.

    Returns ``{"dryRun", "narinfos", "pins", "pinned", "kept",
    "keptBytes", "freedBytes", "deleted": [{"kind", "key", "path",
    "size"}], "failed", "pinnedMissing", "unparsable"}``."""
    return json.loads(
        _native.cache_gc(
            url,
            keep_newer_than=keep_newer_than,
            max_size=max_size,
            grace=grace,
            dry_run=dry_run,
            jobs=jobs,
        )
    )
