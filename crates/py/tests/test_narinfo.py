"""narinfo, keys and signatures against the vectors and the real corpus."""

from __future__ import annotations

import json
import pathlib

import pytest

import nixferry
from nixferry import NarInfo, NixHash, SigningKey, VerifyingKey

from conftest import TESTDATA

CACHE_KEY = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="


def corpus() -> list[str]:
    text = (TESTDATA / "narinfos" / "cache-nixos-org.narinfos").read_text()
    docs = [d.strip("\n") + "\n" for d in text.split("\n\n") if d.strip()]
    return docs


def test_real_corpus_round_trips_and_verifies() -> None:
    docs = corpus()
    assert len(docs) == 978
    trusted = [VerifyingKey.parse(CACHE_KEY)]
    for doc in docs:
        info = NarInfo.parse(doc)
        assert info.render() == doc
        assert str(info) == doc
        assert info.verify(trusted) == "cache.nixos.org-1"
        assert info.count_valid_signatures(CACHE_KEY) == 1
        assert info.compression in ("xz", "bzip2")
        assert info.nar_size > 0
        assert str(info.store_path).startswith("/nix/store/")


def test_tampering_breaks_the_signature() -> None:
    doc = corpus()[0]
    info = NarInfo.parse(doc)
    size = info.nar_size
    tampered = NarInfo.parse(doc.replace(f"NarSize: {size}\n", f"NarSize: {size + 1}\n"))
    with pytest.raises(nixferry.VerificationError) as e:
        tampered.verify([CACHE_KEY])
    assert e.value.reason == "bad-signature"
    assert e.value.key_names == ["cache.nixos.org-1"]
    assert isinstance(e.value, nixferry.SignatureError)
    other = SigningKey.generate("other-1")
    with pytest.raises(nixferry.VerificationError) as e:
        info.verify(other.verifying_key)
    assert e.value.reason == "untrusted-keys"
    info.clear_signatures()
    with pytest.raises(nixferry.VerificationError) as e:
        info.verify([CACHE_KEY])
    assert e.value.reason == "no-signatures"


def test_vector_narinfos_and_fingerprints(vectors: pathlib.Path) -> None:
    cases = json.loads((vectors / "narinfo" / "fingerprints.json").read_text())
    public = VerifyingKey.from_file(vectors / "keys" / "nixspec-test-1.public")
    pyspec = VerifyingKey.from_file(vectors / "keys" / "pyspec-1.public")
    assert len(cases) >= 5
    for case in cases:
        text = (vectors / "narinfo" / case["file"]).read_text()
        info = NarInfo.parse(text)
        assert info.render() == text
        assert info.fingerprint() == case["fingerprint"]
        for sig in case["signatures"]:
            key = public if sig["sig"].startswith("nixspec-test-1:") else pyspec
            assert key.verify(info.fingerprint().encode(), sig["sig"]) == sig["valid"]


def test_typed_fields(vectors: pathlib.Path) -> None:
    text = (vectors / "narinfo" / "signed-xz-3pl2infwzaw2zw5fxxp3pvm3xasr0w4b.narinfo").read_text()
    info = NarInfo.parse(text)
    assert info.store_path.name == "nixspec-hi.txt"
    assert isinstance(info.nar_hash, NixHash)
    assert info.nar_size == 120
    assert info.compression == "xz"
    assert info.url.startswith("nar/")
    assert isinstance(info.file_size, int)
    assert info.references == []
    assert info.signatures and info.signatures[0].startswith("nixspec-test-1:")
    assert info.verify(VerifyingKey.from_file(vectors / "keys" / "nixspec-test-1.public")) == "nixspec-test-1"
    info.check()


def test_sign_with_key_files(vectors: pathlib.Path, tmp_path: pathlib.Path) -> None:
    secret = SigningKey.from_file(vectors / "keys" / "pyspec-1.secret")
    assert secret.name == "pyspec-1"
    assert str(secret.verifying_key) == "pyspec-1:A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
    assert secret.verifying_key == VerifyingKey.from_file(vectors / "keys" / "pyspec-1.public")
    assert "secret" not in repr(secret).lower() or secret.to_file_string() not in repr(secret)
    seeded = SigningKey.from_seed("pyspec-1", bytes(range(32)))
    assert seeded.to_file_string() == secret.to_file_string()
    path = tmp_path / "sk"
    secret.write_file(path)
    assert SigningKey.from_file(path).to_file_string() == secret.to_file_string()

    info = NarInfo(
        "/nix/store/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt",
        "nar/1z63q11s9hppsav4x9kh767bqr7ypmw7ncg3wjncgs4lijvx8li2.nar",
        NixHash.parse("sha256:1z63q11s9hppsav4x9kh767bqr7ypmw7ncg3wjncgs4lijvx8li2"),
        120,
        file_hash=NixHash.parse("sha256:1z63q11s9hppsav4x9kh767bqr7ypmw7ncg3wjncgs4lijvx8li2"),
        file_size=120,
    )
    assert info.render().startswith("StorePath: /nix/store/3pl2")
    info.sign(secret)
    assert info.verify([secret.verifying_key, CACHE_KEY]) == "pyspec-1"
    again = NarInfo.parse(info.render())
    assert again == info
    assert again.verify("pyspec-1:A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=") == "pyspec-1"


def test_errors() -> None:
    with pytest.raises(nixferry.NarInfoError) as e:
        NarInfo.parse("StorePath: /nix/store/x\n")
    assert isinstance(e.value, ValueError) and isinstance(e.value, nixferry.NixferryError)
    with pytest.raises(nixferry.SignatureError):
        VerifyingKey.parse("no-colon")
    with pytest.raises(nixferry.SignatureError):
        SigningKey.parse("name:!!!")
    with pytest.raises(nixferry.SignatureError):
        SigningKey.generate("bad name")
    with pytest.raises(FileNotFoundError):
        SigningKey.from_file("/nonexistent/key")
    with pytest.raises(nixferry.HashError):
        NixHash.parse("sha256:nope")
