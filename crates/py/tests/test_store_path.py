"""Hashes and store paths against the vectors and nix-store --add."""

from __future__ import annotations

import json
import pathlib

import pytest

import nixferry
from nixferry import NixHash, StorePath
from nixferry import hash as nhash
from nixferry import store_path

from conftest import make_tree, source_tree


def test_hash_vectors(vectors: pathlib.Path) -> None:
    for case in json.loads((vectors / "hashes" / "base32-sri-vectors.json").read_text()):
        h = NixHash.compute(case["algo"], case["input"].encode())
        assert h.to_hex() == case["hex"]
        assert h.to_nix32() == case["nix32"]
        assert h.to_sri() == case["sri"]
        assert NixHash.parse(case["sri"]) == h
        assert NixHash.parse(f"{case['algo']}:{case['nix32']}") == h
        assert NixHash.parse_unprefixed(case["hex"], case["algo"]) == h
        assert NixHash.from_bytes(case["algo"], h.raw) == h
        assert nhash.nix32_decode(case["nix32"], len(h.raw)) == h.raw
        assert nhash.nix32_encode(h.raw) == case["nix32"]
        assert hash(NixHash.parse(case["sri"])) == hash(h)


def test_store_path_vectors(vectors: pathlib.Path) -> None:
    cases = json.loads((vectors / "hashes" / "store-paths.json").read_text())
    for case in cases:
        p = StorePath.parse(case["store_path"])
        assert str(p) == case["store_path"]
        assert p.digest.hex() == case["compressed_20_bytes"]
        assert StorePath.from_digest(p.digest, p.name) == p
        assert store_path.is_valid_path(case["store_path"])


def test_add_path_of_source_tree(tmp_path: pathlib.Path) -> None:
    tree = source_tree(tmp_path / "source-tree")
    p = store_path.add_path(tree, name="nixspec-tree")
    assert str(p) == "/nix/store/rsjiq56rggpz3zk7marf4by5qgdya80h-nixspec-tree"
    h = nixferry.nar.hash_path(tree).nar_hash
    assert store_path.fixed_output_path("nixspec-tree", h) == p


def test_text_and_fixed_paths() -> None:
    # builtins.toFile "nixspec-text" "hello world\n"
    assert str(store_path.text_path("nixspec-text", b"hello world\n")) == (
        "/nix/store/107nxyv3kkp6x8711ij8bwzg9c8y5zch-nixspec-text"
    )
    # nix-store --add-fixed sha256 nixspec-hi.txt (contents "hi")
    flat = store_path.fixed_output_path("nixspec-hi.txt", NixHash.compute("sha256", b"hi"), recursive=False)
    assert str(flat) == "/nix/store/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt"


def test_validation_errors() -> None:
    store_path.validate_name("hello-2.12")
    for bad in ["", ".", "..", "a/b", "x" * 212, "sp ace"]:
        with pytest.raises(nixferry.StorePathError):
            store_path.validate_name(bad)
    assert not store_path.is_valid_path("/nix/store/short")
    with pytest.raises(nixferry.StorePathError):
        StorePath.parse("/elsewhere/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-x")
    p = StorePath.parse("3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-x.drv")
    assert p.is_derivation and p.hash_part == "3pl2infwzaw2zw5fxxp3pvm3xasr0w4b"
    assert sorted([StorePath.parse("b" * 32 + "-x"), p])[0] == p


def test_add_path_matches_nix(nix: object, tmp_path: pathlib.Path) -> None:
    tree = make_tree(tmp_path / "pytree")
    want = nix("nix-store", "--add", tree).decode().strip()  # type: ignore[operator]
    assert str(store_path.add_path(tree)) == want
