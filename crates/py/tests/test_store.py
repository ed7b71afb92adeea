"""Stores by URL and copies, with progress events; Nix accepts the result."""

from __future__ import annotations

import pathlib

import pytest

import nixferry
from nixferry import SigningKey, VerifyingKey

from conftest import make_tree

HI = "/nix/store/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt"
DRV_OUT = "/nix/store/jgs69zx98r4fpm73d82y357pps9llcic-nixspec-drv"


def test_queries_on_a_file_cache(signed_cache: pathlib.Path, vectors: pathlib.Path) -> None:
    store = nixferry.open_store(f"file://{signed_cache}")
    assert store.store_dir == "/nix/store"
    assert store.url.startswith("file://")
    info = store.path_info(HI)
    assert info is not None
    assert info.nar_size == 120 and info.compression == "xz"
    assert info.url is not None and info.url.endswith(".nar.xz")
    assert info.verify(VerifyingKey.from_file(vectors / "keys" / "nixspec-test-1.public")) in (
        None,
        "nixspec-test-1",
    )
    missing = "/nix/store/" + "0" * 32 + "-missing"
    assert store.path_info(missing) is None
    assert store.has_paths([HI, missing]) == {HI}
    assert set(store.path_infos([HI, DRV_OUT])) == {HI, DRV_OUT}
    closure = [i.path for i in store.closure(DRV_OUT)]
    assert closure == [HI, DRV_OUT]
    with pytest.raises(nixferry.PathNotFoundError) as e:
        store.closure([missing])
    assert e.value.path == missing
    assert isinstance(e.value, nixferry.StoreError)


def test_copy_between_caches_with_progress(
    signed_cache: pathlib.Path, vectors: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    src = nixferry.open_store(f"file://{signed_cache}")
    dst_url = f"file://{tmp_path / 'out'}?compression=zstd"
    # Not signed by a trusted key: refused. The path whose content address
    # verifies needs no signature and is copied.
    refused = nixferry.copy(src, f"file://{tmp_path / 'refused'}", [DRV_OUT], trusted_keys=[], raise_on_failure=False)
    assert not refused.is_complete
    assert [p for p, _ in refused.failed] == [DRV_OUT]
    assert "lacks a valid signature" in refused.failed[0][1]
    with pytest.raises(nixferry.CopyError) as err:
        nixferry.copy(src, f"file://{tmp_path / 'refused'}", [DRV_OUT], trusted_keys=[])
    assert err.value.failed
    assert err.value.summary is not None and not err.value.summary.is_complete

    events: list[object] = []
    trusted = VerifyingKey.from_file(vectors / "keys" / "nixspec-test-1.public")
    summary = nixferry.copy(src, dst_url, [DRV_OUT], trusted_keys=[trusted], progress=events.append, jobs=2)
    assert summary.is_complete and summary.copied == 2 and summary.skipped == 0
    assert summary.nar_bytes == 120 + 808
    planned = [e for e in events if isinstance(e, nixferry.CopyPlanned)]
    assert len(planned) == 1 and planned[0].closure == 2 and planned[0].missing == 2
    copied = {e.path for e in events if isinstance(e, nixferry.PathCopied)}
    assert copied == {HI, DRV_OUT}
    assert any(isinstance(e, nixferry.PathStarted) for e in events)
    match events[0]:
        case nixferry.CopyPlanned(closure, missing, nar_bytes):
            assert (closure, missing, nar_bytes) == (2, 2, 928)
        case _:
            pytest.fail(f"first event {events[0]!r}")
    assert "CopyPlanned(closure=2" in repr(events[0])

    again: list[object] = []
    summary = nixferry.copy(src, dst_url, DRV_OUT, trusted_keys=trusted, progress=again.append)
    assert summary.skipped == 2 and summary.copied == 0
    assert sum(isinstance(e, nixferry.PathSkipped) for e in again) == 2
    out = nixferry.open_store(dst_url)
    assert out.has_paths([HI, DRV_OUT]) == {HI, DRV_OUT}
    info = out.path_info(DRV_OUT)
    assert info is not None and info.compression == "zstd"


def test_progress_callback_exception_cancels(signed_cache: pathlib.Path, tmp_path: pathlib.Path) -> None:
    class Stop(Exception):
        pass

    def progress(event: object) -> None:
        raise Stop

    with pytest.raises(Stop):
        nixferry.copy(f"file://{signed_cache}", f"file://{tmp_path / 'o'}", [DRV_OUT], check_sigs=False, progress=progress)


def test_store_errors(tmp_path: pathlib.Path) -> None:
    with pytest.raises(nixferry.StoreUrlError):
        nixferry.open_store("gopher://example")
    with pytest.raises(nixferry.StoreUrlError):
        nixferry.open_store(f"file://{tmp_path}?no-such-parameter=1")
    store = nixferry.open_store(f"file://{tmp_path / 'c'}")
    with pytest.raises(nixferry.StorePathError):
        store.path_info("/nix/store/not-valid")
    with pytest.raises(nixferry.PathNotFoundError):
        nixferry.copy(store, f"file://{tmp_path / 'd'}", ["/nix/store/" + "1" * 32 + "-x"])


def test_copy_from_local_into_cache_nix_accepts(nix: object, tmp_path: pathlib.Path) -> None:
    tree = make_tree(tmp_path / "py-copy-tree")
    path = nix("nix-store", "--add", tree).decode().strip()  # type: ignore[operator]
    key = SigningKey.generate("py-copy-1")
    cache = tmp_path / "cache"
    local = nixferry.open_store("local")
    info = local.path_info(path)
    assert info is not None and info.nar_hash == nixferry.nar.hash_path(tree).nar_hash
    assert [i.path for i in local.closure([path])] == [path]

    events: list[object] = []
    summary = nixferry.copy(local, f"file://{cache}?compression=xz", [path], secret_keys=[key], progress=events.append)
    assert summary.is_complete and summary.copied == 1
    assert any(isinstance(e, nixferry.PathCopied) and e.path == path for e in events)
    assert any(isinstance(e, nixferry.BytesCopied) for e in events)

    narinfo = nixferry.NarInfo.parse((cache / f"{pathlib.Path(path).name[:32]}.narinfo").read_text())
    assert narinfo.verify(key.verifying_key) == "py-copy-1"

    chroot = tmp_path / "chroot"
    nix(  # type: ignore[operator]
        "nix", "copy", "--from", f"file://{cache}", "--to", chroot,
        "--option", "trusted-public-keys", str(key.verifying_key), path,
    )
    out = nix("nix", "path-info", "--store", chroot, "--json", path)  # type: ignore[operator]
    assert path.encode() in out
