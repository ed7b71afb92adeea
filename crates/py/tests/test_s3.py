"""``s3://`` stores from Python, against the S3 server the Rust tests use
(moto, started here on 127.0.0.1 with signatures checked)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

import nixferry
from nixferry import VerifyingKey

from conftest import REPO, skip

HI = "/nix/store/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt"
DRV_OUT = "/nix/store/jgs69zx98r4fpm73d82y357pps9llcic-nixspec-drv"
HARNESS = REPO / "crates" / "cli" / "tests" / "it" / "s3_server.py"


def _have_moto() -> bool:
    try:
        import moto.server  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture
def s3(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A moto server with the bucket ``cache``; its credentials are set in
    the environment. Yields its port."""
    if not _have_moto():
        skip("moto[server] is not installed")
    port_file, creds = tmp_path / "port", tmp_path / "creds.json"
    server = subprocess.Popen(
        [sys.executable, HARNESS, "serve", "--port-file", port_file, "--creds-file", creds, "--bucket", "cache"]
    )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert server.poll() is None, "the S3 server exited"
            assert time.monotonic() < deadline, "no S3 server"
            time.sleep(0.05)
        keys = json.loads(creds.read_text())
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys["access_key_id"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys["secret_access_key"])
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        yield int(port_file.read_text())
    finally:
        server.kill()
        server.wait()


def test_copy_through_a_bucket(s3: int, vectors: pathlib.Path, tmp_path: pathlib.Path) -> None:
    trusted = VerifyingKey.from_file(vectors / "keys" / "nixspec-test-1.public")
    url = f"s3://cache/py?endpoint=127.0.0.1:{s3}&scheme=http&compression=zstd"
    src = f"file://{vectors / 'binary-cache' / 'signed-xz'}"
    summary = nixferry.copy(src, url, [DRV_OUT], trusted_keys=[trusted])
    assert summary.is_complete and summary.copied == 2

    bucket = nixferry.open_store(url)
    assert bucket.has_paths([HI, DRV_OUT]) == {HI, DRV_OUT}
    assert [i.path for i in bucket.closure(DRV_OUT)] == [HI, DRV_OUT]
    info = bucket.path_info(HI)
    assert info is not None and info.compression == "zstd" and info.nar_size == 120

    back = nixferry.copy(bucket, f"file://{tmp_path / 'back'}", DRV_OUT, trusted_keys=trusted)
    assert back.is_complete and back.copied == 2


def test_wrong_credentials(s3: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    bucket = nixferry.open_store(f"s3://cache?endpoint=http://127.0.0.1:{s3}")
    with pytest.raises(nixferry.StoreError, match="SignatureDoesNotMatch"):
        bucket.path_info(HI)
