"""nixferry.check: the checks of a copy before any byte moves."""

from __future__ import annotations

import pathlib

import pytest

import nixferry

HI = "/nix/store/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt"


def test_each_destination_gets_a_report(signed_cache: pathlib.Path, tmp_path: pathlib.Path) -> None:
    dest = tmp_path / "dest"
    reports = nixferry.check(
        f"file://{signed_cache}", [f"file://{dest}", "http://127.0.0.1:9"], HI, timeout=10
    )
    good, down = reports
    assert good["to"] == f"file://{dest}" and good["ok"] is True
    assert good["missing"] == {"paths": 1, "narBytes": 120}
    assert good["space"]["freeBytes"] > good["space"]["neededBytes"] == 120
    assert {c["check"] for c in good["checks"]} >= {"write", "paths", "space"}
    assert not dest.exists()  # a check writes nothing
    assert down["ok"] is False and down["status"] == "fail"
    assert "nix-cache-info" in down["checks"][0]["message"]

    # What it has is counted, and a key that will sign is named.
    nixferry.copy(f"file://{signed_cache}", f"file://{dest}", HI, check_sigs=False)
    key = nixferry.SigningKey.generate("check-1")
    [again] = nixferry.check(f"file://{signed_cache}", [f"file://{dest}"], [HI], secret_keys=[key])
    assert again["missing"] == {"paths": 0, "narBytes": 0}
    assert again["signingKeys"] == ["check-1"]


def test_a_path_the_source_lacks_raises(signed_cache: pathlib.Path, tmp_path: pathlib.Path) -> None:
    missing = "/nix/store/" + "0" * 32 + "-missing"
    with pytest.raises(nixferry.NixferryError):
        nixferry.check(f"file://{signed_cache}", [f"file://{tmp_path}/d"], missing)
    with pytest.raises(ValueError, match="timeout"):
        nixferry.check(f"file://{signed_cache}", [], HI, timeout=0)
