"""Store.add: a tree packed as the path nix-store --add makes, signed."""

from __future__ import annotations

import pathlib

import pytest

import nixferry
from nixferry import store_path


def tree(root: pathlib.Path) -> pathlib.Path:
    site = root / "site"
    (site / "css").mkdir(parents=True)
    (site / "index.html").write_text("<h1>hello</h1>\n")
    (site / "css" / "main.css").write_text("h1 { color: red }\n")
    return site


def test_add_makes_the_path_nix_store_add_gives_and_signs_it(tmp_path: pathlib.Path) -> None:
    site = tree(tmp_path)
    cache = nixferry.open_store(f"file://{tmp_path}/cache")
    key = nixferry.SigningKey.generate("cache.example.org-1")

    info = cache.add(site, secret_keys=[key])

    assert info.path == str(store_path.add_path(site))
    assert info.path.endswith("-site")
    assert info.ca is not None and info.ca.startswith("fixed:r:sha256:")
    # Signed, though a content address needs no signature to verify.
    assert [s.split(":")[0] for s in info.signatures] == ["cache.example.org-1"]
    assert info.verify([]) is None
    assert info.nar_hash == nixferry.nar.hash_path(site).nar_hash
    assert cache.has_paths([info.path]) == {info.path}
    # Added again: the path is there already and is left alone.
    again = cache.add(site, secret_keys=[key])
    assert again.path == info.path and again.signatures == info.signatures


def test_add_takes_a_name_and_copies_like_any_path(tmp_path: pathlib.Path) -> None:
    site = tree(tmp_path)
    cache = nixferry.open_store(f"file://{tmp_path}/cache")
    key = nixferry.SigningKey.generate("cache.example.org-1")
    info = cache.add(site, name="website", secret_keys=[key])
    assert info.path.endswith("-website")

    summary = nixferry.copy(
        cache, f"file://{tmp_path}/mirror", [info.path], trusted_keys=[key.verifying_key]
    )
    assert (summary.copied, len(summary.failed)) == (1, 0)


def test_add_refuses_an_invalid_name(tmp_path: pathlib.Path) -> None:
    cache = nixferry.open_store(f"file://{tmp_path}/cache")
    with pytest.raises(nixferry.errors.StorePathError):
        cache.add(tree(tmp_path), name="no/slashes")
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*.narinfo"))
