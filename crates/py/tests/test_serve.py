"""nixferry.serve: a store served over HTTP, read by urllib and by copies,
uploads checked as with ``nixferry serve --write``."""

from __future__ import annotations

import json
import pathlib
import shutil
import socket
import urllib.error
import urllib.request

import pytest

import nixferry
from nixferry import SigningKey, VerifyingKey

HI = "/nix/store/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt"
DRV_OUT = "/nix/store/jgs69zx98r4fpm73d82y357pps9llcic-nixspec-drv"
MISSING = "/nix/store/" + "0" * 32 + "-missing"


def hash_part(path: str) -> str:
    return path.removeprefix("/nix/store/")[:32]


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        data: bytes = r.read()
        return data


def status_of(url: str, method: str = "GET", data: bytes | None = None, token: str | None = None) -> int:
    req = urllib.request.Request(url, data=data, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status: int = r.status
            return status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate("serve-test-1")


@pytest.fixture
def cache(vectors: pathlib.Path, tmp_path: pathlib.Path, key: SigningKey) -> pathlib.Path:
    """A file:// cache holding DRV_OUT's closure, put there by a copy and
    signed with ``key``."""
    src = tmp_path / "signed-xz"
    shutil.copytree(vectors / "binary-cache" / "signed-xz", src)
    trusted = VerifyingKey.from_file(vectors / "keys" / "nixspec-test-1.public")
    dest = tmp_path / "served"
    summary = nixferry.copy(
        f"file://{src}", f"file://{dest}?compression=zstd", [DRV_OUT], trusted_keys=[trusted], secret_keys=[key]
    )
    assert summary.is_complete and summary.copied == 2
    return dest


def test_serves_a_file_cache(cache: pathlib.Path, tmp_path: pathlib.Path, key: SigningKey) -> None:
    with nixferry.serve(f"file://{cache}", priority=35, want_mass_query=True) as server:
        assert isinstance(server, nixferry.Server)
        host, port = server.address
        assert host == "127.0.0.1" and port == server.port and port > 0
        assert server.url == f"http://127.0.0.1:{port}"
        assert not server.closed
        assert "running" in repr(server)

        info = fetch(f"{server.url}/nix-cache-info").decode()
        assert "StoreDir: /nix/store\n" in info
        assert "Priority: 35\n" in info
        assert "WantMassQuery: 1\n" in info
        narinfo = fetch(f"{server.url}/{hash_part(DRV_OUT)}.narinfo")
        assert narinfo == (cache / f"{hash_part(DRV_OUT)}.narinfo").read_bytes()
        assert f"StorePath: {DRV_OUT}\n".encode() in narinfo
        assert status_of(f"{server.url}/{hash_part(MISSING)}.narinfo") == 404
        assert status_of(f"{server.url}/../etc/passwd") == 404
        # Read-only unless asked.
        assert status_of(f"{server.url}/nix-cache-info", "PUT", b"StoreDir: /nix/store\n") == 405

        # The server as a store: queried, and copied from.
        store = nixferry.open_store(server.url)
        assert store.has_paths([HI, MISSING]) == {HI}
        out = tmp_path / "out"
        summary = nixferry.copy(server.url, f"file://{out}", [DRV_OUT], trusted_keys=[key.verifying_key])
        assert summary.is_complete and summary.copied == 2
        assert nixferry.open_store(f"file://{out}").has_paths([HI, DRV_OUT]) == {HI, DRV_OUT}
        with pytest.raises(nixferry.PathNotFoundError):
            nixferry.copy(server.url, f"file://{out}", [MISSING])
        url = server.url

    assert server.closed
    assert "closed" in repr(server)
    server.close()  # Again: nothing to do.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert server.url == url


def test_serves_an_open_store_again_signed(cache: pathlib.Path) -> None:
    upstream = nixferry.serve(nixferry.open_store(f"file://{cache}"))
    try:
        again_key = SigningKey.generate("served-again-1")
        with nixferry.serve(nixferry.open_store(upstream.url), secret_keys=[again_key], compression="zstd") as again:
            info = nixferry.open_store(again.url).path_info(DRV_OUT)
            assert info is not None and info.compression == "zstd"
            assert info.verify([again_key.verifying_key]) == "served-again-1"
    finally:
        upstream.close()
    assert upstream.closed


def test_uploads_are_checked(cache: pathlib.Path, tmp_path: pathlib.Path) -> None:
    narinfo_name = f"{hash_part(HI)}.narinfo"
    narinfo = (cache / narinfo_name).read_bytes()
    nar_url = next(line for line in narinfo.decode().splitlines() if line.startswith("URL: "))[5:]
    nar_file = (cache / nar_url).read_bytes()
    dest = tmp_path / "dest"
    with nixferry.serve(f"file://{dest}", writable=True, token="sekrit") as server:

        def put(name: str, data: bytes, token: str | None = "sekrit") -> int:
            return status_of(f"{server.url}/{name}", "PUT", data, token)

        # No token, or the wrong one.
        assert put(nar_url, nar_file, None) == 401
        assert put(nar_url, nar_file, "nope") == 401
        # A narinfo before its NAR file.
        assert put(narinfo_name, narinfo) == 400
        # A NAR file that is not what its name says.
        tampered = bytearray(nar_file)
        tampered[len(tampered) // 2] ^= 1
        assert put(nar_url, bytes(tampered)) == 400
        assert not (dest / nar_url).exists()
        # The real thing.
        assert put(nar_url, nar_file) == 200
        assert put(narinfo_name, narinfo) == 200
        assert fetch(f"{server.url}/{narinfo_name}") == narinfo
        assert nixferry.open_store(f"file://{dest}").has_paths([HI]) == {HI}


def test_settings_that_do_not_fit(cache: pathlib.Path, key: SigningKey) -> None:
    url = f"file://{cache}"
    with pytest.raises(ValueError, match="token"):
        nixferry.serve(url, writable=True)
    with pytest.raises(ValueError, match="secret keys"):
        nixferry.serve(url, secret_keys=[key])
    with pytest.raises(ValueError, match="compressed on the fly"):
        nixferry.serve("http://127.0.0.1:9", compression="xz")
    with pytest.raises(ValueError, match="file://"):
        nixferry.serve("http://127.0.0.1:9", writable=True, token="t")
    with pytest.raises(ValueError, match="HOST:PORT"):
        nixferry.serve(url, listen="nowhere")
    with pytest.raises(nixferry.StoreUrlError):
        nixferry.serve("gopher://example")
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            nixferry.serve(url, listen=f"127.0.0.1:{taken.getsockname()[1]}")
    finally:
        taken.close()


def test_a_private_cache_needs_a_token(cache: pathlib.Path, tmp_path: pathlib.Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("read fleet-token\n")
    narinfo = f"/{hash_part(DRV_OUT)}.narinfo"
    with nixferry.serve(f"file://{cache}", tokens_file=tokens) as server:
        assert status_of(server.url + narinfo) == 401
        assert status_of(server.url + narinfo, token="nope") == 401
        assert status_of(server.url + narinfo, token="fleet-token") == 200
        assert status_of(server.url + "/health") == 200
        # Read again on demand: the old token is gone.
        tokens.write_text("read new-token\nwrite upload-token\n")
        assert server.reload_tokens() == 2
        assert status_of(server.url + narinfo, token="fleet-token") == 401
        assert status_of(server.url + narinfo, token="new-token") == 200
        tokens.write_text("admin x\n")
        with pytest.raises(ValueError, match="line 1"):
            server.reload_tokens()
        assert status_of(server.url + narinfo, token="new-token") == 200
    tokens.write_text("read fleet-token\n")
    with nixferry.serve(f"file://{cache}", tokens_file=tokens, public_cache_info=True) as server:
        assert status_of(server.url + "/nix-cache-info") == 200
        assert status_of(server.url + narinfo) == 401


def test_an_upstream_proxy(cache: pathlib.Path, tmp_path: pathlib.Path, key: SigningKey) -> None:
    kept = tmp_path / "kept"
    with nixferry.serve(f"file://{cache}") as upstream:
        # Trusted: served from upstream, and kept.
        with nixferry.serve(
            f"file://{tmp_path / 'own'}",
            upstreams=[upstream.url],
            trusted_keys=[key.verifying_key],
            cache_upstream=f"file://{kept}",
            upstream_timeout=2.0,
        ) as proxy:
            narinfo = fetch(f"{proxy.url}/{hash_part(DRV_OUT)}.narinfo").decode()
            assert f"StorePath: {DRV_OUT}\n" in narinfo
            assert f"URL: nar/{hash_part(DRV_OUT)}-" in narinfo
            out = tmp_path / "out"
            summary = nixferry.copy(proxy.url, f"file://{out}", [DRV_OUT], trusted_keys=[key.verifying_key])
            assert summary.is_complete and summary.copied == 2
            metrics = fetch(f"{proxy.url}/metrics").decode()
            assert 'nixferry_upstream_fetches_total{kind="nar",result="hit"}' in metrics
        # The proxy's copies may still be running when it closes; what
        # they finished is in the kept cache, checked.
        assert kept.exists()
        # Not trusted (Nix's default keys): refused.
        with nixferry.serve(f"file://{tmp_path / 'other'}", upstreams=[upstream.url]) as strict:
            assert status_of(f"{strict.url}/{hash_part(DRV_OUT)}.narinfo") == 404
    with pytest.raises(ValueError, match="needs an upstream"):
        nixferry.serve(f"file://{cache}", cache_upstream=f"file://{kept}")
    with pytest.raises(ValueError, match="upstream_timeout"):
        nixferry.serve(f"file://{cache}", upstreams=["http://127.0.0.1:9"], upstream_timeout=0)


def test_bounds_and_log_lines(cache: pathlib.Path, capfd: pytest.CaptureFixture[str]) -> None:
    url = f"file://{cache}"
    with pytest.raises(ValueError, match="log_format"):
        nixferry.serve(url, log_format="xml")
    with pytest.raises(ValueError, match="header_timeout"):
        nixferry.serve(url, header_timeout=0)
    with nixferry.serve(url, verbose=True, log_format="json", header_timeout=1, io_timeout=1) as server:
        assert status_of(f"{server.url}/{hash_part(DRV_OUT)}.narinfo") == 200
        # An idle connection is closed after the header timeout.
        idle = socket.create_connection(server.address)
        idle.settimeout(10)
        try:
            assert idle.recv(1) == b""
        finally:
            idle.close()
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
    asked = [line for line in lines if line.get("path") == f"/{hash_part(DRV_OUT)}.narinfo"]
    assert len(asked) == 1, lines
    assert asked[0]["status"] == 200 and asked[0]["end"] == "done" and asked[0]["bytes"] > 0
