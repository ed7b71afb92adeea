"""``Store.path_info_json`` and ``PathInfo.to_json``: what ``nix path-info
--json`` prints, byte for byte, as ``nixferry path-info --json`` does."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

import nixferry
from conftest import make_tree

HI = "/nix/store/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt"
DRV_OUT = "/nix/store/jgs69zx98r4fpm73d82y357pps9llcic-nixspec-drv"
MISSING = "/nix/store/" + "0" * 32 + "-missing"


def items(text: str) -> list[list[tuple[str, Any]]]:
    """The objects of a JSON array as (key, value) lists, keys in order."""
    return [list(o.items()) for o in json.loads(text)]


def test_path_info_json_of_a_binary_cache(signed_cache: pathlib.Path) -> None:
    store = nixferry.open_store(f"file://{signed_cache}")
    text = store.path_info_json([DRV_OUT, MISSING, HI])
    assert "\n" not in text and " " not in text
    objs = json.loads(text)
    assert [o["path"] for o in objs] == [DRV_OUT, MISSING, HI]
    assert objs[1] == {"path": MISSING, "valid": False}
    drv = objs[0]
    assert list(drv) == [
        "path",
        "narHash",
        "narSize",
        "references",
        "deriver",
        "signatures",
        "url",
        "downloadHash",
        "downloadSize",
    ]
    info = store.path_info(DRV_OUT)
    assert info is not None
    assert drv["narHash"] == info.nar_hash.to_sri()
    assert drv["narSize"] == info.nar_size == 808
    assert drv["references"] == info.references
    assert drv["signatures"] == info.signatures
    assert drv["url"] == info.url
    assert drv["downloadSize"] == info.file_size
    assert "ca" in objs[2] and "closureSize" not in objs[2]

    # Each object is the path's to_json().
    hi = store.path_info(HI)
    assert hi is not None
    missing = json.dumps(objs[1], separators=(",", ":"))
    assert text == f"[{info.to_json()},{missing},{hi.to_json()}]"

    # A path asked twice is reported twice.
    assert [o["path"] for o in json.loads(store.path_info_json([HI, HI]))] == [HI, HI]
    assert store.path_info_json([]) == "[]"
    # A single path may be given as it is.
    assert store.path_info_json(HI) == store.path_info_json([HI])


def test_closure_sizes_and_recursion(signed_cache: pathlib.Path) -> None:
    store = nixferry.open_store(f"file://{signed_cache}")
    objs = json.loads(store.path_info_json([DRV_OUT], recursive=True, closure_size=True))
    # References first.
    assert [o["path"] for o in objs] == [HI, DRV_OUT]
    hi, drv = objs
    assert hi["closureSize"] == 120 and drv["closureSize"] == 120 + 808
    assert hi["closureDownloadSize"] == hi["downloadSize"]
    assert drv["closureDownloadSize"] == hi["downloadSize"] + drv["downloadSize"]
    keys = list(drv)
    # Nix's order: closureSize after ca/references, closureDownloadSize last.
    assert keys.index("closureSize") == keys.index("references") + 1
    assert keys[-1] == "closureDownloadSize"

    sized = json.loads(store.path_info_json(DRV_OUT, closure_size=True))
    assert sized == [drv]

    with pytest.raises(nixferry.PathNotFoundError):
        store.path_info_json([MISSING], recursive=True)
    # Not recursive, a missing path is only reported.
    assert json.loads(store.path_info_json([MISSING], closure_size=True)) == [{"path": MISSING, "valid": False}]


def test_path_info_json_is_what_nix_prints(nix: Any, signed_cache: pathlib.Path, tmp_path: pathlib.Path) -> None:
    url = f"file://{signed_cache}"
    store = nixferry.open_store(url)
    for flags, kwargs in [
        ((), {}),
        (("-r",), {"recursive": True}),
        (("-r", "-S"), {"recursive": True, "closure_size": True}),
    ]:
        theirs = nix("nix", "path-info", "--json", *flags, "--store", url, DRV_OUT).decode()
        # Here the closure's order is Nix's (sorted) order too.
        assert store.path_info_json([DRV_OUT], **kwargs) == theirs, flags

    # The local store: the same objects (Nix sorts them by path, nixferry
    # lists references first).
    tree = make_tree(tmp_path / "py-path-info-tree")
    path = nix("nix-store", "--add", tree).decode().strip()
    local = nixferry.open_store("local")
    theirs = nix("nix", "path-info", "--json", "-r", "-S", path).decode()
    ours = local.path_info_json([path], recursive=True, closure_size=True)
    assert sorted(items(ours)) == sorted(items(theirs))
    info = local.path_info(path)
    assert info is not None
    plain = nix("nix", "path-info", "--json", path).decode()
    assert "[" + info.to_json() + "]" == plain == local.path_info_json(path)
