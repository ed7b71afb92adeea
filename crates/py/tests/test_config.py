"""nixferry.nix_config: Nix's configuration as Nix reads it."""

from __future__ import annotations

import pathlib

import pytest

import nixferry


def test_files_environment_and_options(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "etc"
    conf.mkdir()
    (conf / "nix.conf").write_text("substituters = https://a.example/\nconnect-timeout = 5\n")
    monkeypatch.setenv("NIX_CONF_DIR", str(conf))
    monkeypatch.setenv("NIX_USER_CONF_FILES", "")
    monkeypatch.setenv("NIX_CONFIG", "extra-substituters = https://b.example/")
    config = nixferry.nix_config([("trusted-public-keys", "k-1:AAAA")])
    assert config["substituters"]["value"] == ["https://a.example/", "https://b.example/"]
    assert config["substituters"]["origins"] == [f"{conf}/nix.conf:1", "NIX_CONFIG:1"]
    assert config["connect-timeout"]["value"] == 5
    assert config["netrc-file"]["value"] == f"{conf}/netrc"
    assert config["trusted-public-keys"] == {"value": ["k-1:AAAA"], "origins": ["--option"]}


def test_bad_settings_raise(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIX_CONF_DIR", str(tmp_path))
    monkeypatch.setenv("NIX_USER_CONF_FILES", "")
    monkeypatch.delenv("NIX_CONFIG", raising=False)
    with pytest.raises(nixferry.NixferryError, match="connect-timeout"):
        nixferry.nix_config([("connect-timeout", "soon")])
    (tmp_path / "nix.conf").write_text("include /nonexistent/file.conf\n")
    with pytest.raises(nixferry.NixferryError, match="nonexistent"):
        nixferry.nix_config()
