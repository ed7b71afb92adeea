"""nixferry.cache: verify, sign, stats, pins and gc of a file:// cache,
the same reports as ``nixferry cache … --json``."""

from __future__ import annotations

import os
import pathlib
import time

import pytest

import nixferry
from nixferry import cache
from nixferry.errors import CacheError, StoreError


def make_cache(tmp: pathlib.Path, key: nixferry.SigningKey, names: list[str]) -> tuple[str, dict[str, str]]:
    """A file:// cache with one added path per name, two days old."""
    store = nixferry.open_store(f"file://{tmp}/cache")
    paths = {}
    for name in names:
        src = tmp / "src" / name
        src.mkdir(parents=True)
        (src / "file").write_text(f"{name}\n" * 100)
        paths[name] = store.add(src, secret_keys=[key]).path
    old = time.time() - 2 * 86400
    for root, _, files in os.walk(tmp / "cache"):
        for f in files:
            os.utime(os.path.join(root, f), (old, old))
    return f"file://{tmp}/cache", paths


def test_verify_finds_a_deleted_nar_and_repairs_from_a_copy(tmp_path: pathlib.Path) -> None:
    key = nixferry.SigningKey.generate("py-cache-1")
    url, paths = make_cache(tmp_path, key, ["a", "b"])
    backup = f"file://{tmp_path}/backup"
    nixferry.copy(url, backup, list(paths.values()), trusted_keys=[key.verifying_key])

    report = cache.verify(url, trusted_keys=[key.verifying_key])
    assert report["clean"] and report["narinfos"] == 2 and report["problems"] == []
    # Added paths are content-addressed: their address verifies them
    # without a trusted signature.
    assert cache.verify(url)["clean"]

    info = nixferry.open_store(url).path_info(paths["a"])
    assert info is not None and info.url is not None
    (tmp_path / "cache" / info.url).unlink()
    report = cache.verify(url, trusted_keys=[key.verifying_key])
    assert [(p["kind"], p["path"], p["narFile"]) for p in report["problems"]] == [
        ("nar-missing", paths["a"], info.url)
    ]
    repaired = cache.verify(url, trusted_keys=[key.verifying_key], repair_from=backup)
    assert repaired["clean"] and repaired["repair"]["repaired"] == [paths["a"]]


def test_sign_rotates_and_stats_count(tmp_path: pathlib.Path) -> None:
    old = nixferry.SigningKey.generate("py-old-1")
    new = nixferry.SigningKey.generate("py-new-1")
    url, paths = make_cache(tmp_path, old, ["a", "b", "c"])
    report = cache.sign(url, [new], remove_signatures_by=["py-old-1"])
    assert (report["narinfos"], report["rewritten"], report["failed"]) == (3, 3, [])
    assert cache.verify(url, trusted_keys=[new.verifying_key])["clean"]
    for narinfo in (tmp_path / "cache").glob("*.narinfo"):
        sigs = [line for line in narinfo.read_text().splitlines() if line.startswith("Sig: ")]
        assert [s.split(":")[1].strip() for s in sigs] == ["py-new-1"]
    stats = cache.stats(url)
    assert (stats["paths"], stats["unsigned"], stats["pins"]) == (3, 0, 0)
    assert stats["narBytes"] > 0 and stats["storedBytes"] > 0


def test_pins_and_gc(tmp_path: pathlib.Path) -> None:
    key = nixferry.SigningKey.generate("py-gc-1")
    url, paths = make_cache(tmp_path, key, ["web", "db", "old"])

    with pytest.raises(CacheError, match="no pins"):
        cache.gc(url)
    with pytest.raises(CacheError, match="not a valid pin name"):
        cache.pin(url, "a/b", [paths["web"]])

    pin = cache.pin(url, "web", [paths["web"]])
    assert pin["name"] == "web" and pin["keep"] == 3
    cache.pin(url, "db", paths["db"], keep=1)
    listed = cache.pins(url)
    assert [p["name"] for p in listed] == ["db", "web"]
    assert listed[1]["generations"][0]["closurePaths"] == 1
    assert listed[1]["generations"][0]["closureNarSize"] > 0

    dry = cache.gc(url, dry_run=True)
    assert dry["dryRun"] and [d["path"] for d in dry["deleted"] if d["kind"] == "path"] == [paths["old"]]
    assert cache.stats(url)["paths"] == 3

    # A second generation of db (which keeps one) drops the first.
    cache.pin(url, "db", [paths["web"]])
    report = cache.gc(url)
    deleted = sorted(d["path"] for d in report["deleted"] if d["kind"] == "path")
    assert deleted == sorted([paths["old"], paths["db"]])
    assert report["freedBytes"] == sum(d["size"] for d in report["deleted"])
    assert cache.verify(url, trusted_keys=[key.verifying_key], grace=0)["clean"]

    cache.unpin(url, "web")
    cache.unpin(url, "db")
    with pytest.raises(CacheError, match="no pin named 'db'"):
        cache.unpin(url, "db")
    # No pins: a minimum age keeps recent paths, nothing here is recent.
    report = cache.gc(url, keep_newer_than=86400.0, grace=0)
    assert [d["path"] for d in report["deleted"] if d["kind"] == "path"] == [paths["web"]]
    assert cache.stats(url)["paths"] == 0


def test_errors(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError):
        cache.stats(f"file://{tmp_path}/none")
    with pytest.raises(StoreError):
        cache.stats("ssh://localhost")
    with pytest.raises(ValueError, match="grace"):
        cache.gc(f"file://{tmp_path}", grace=-1)
