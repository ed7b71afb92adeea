"""The trust policy of ``copy``, the command-line tool's too: Nix's
defaults (``require-sigs``, ``trusted-public-keys``, and the public halves
of the keys it signs with)."""

from __future__ import annotations

import pathlib

import pytest

import nixferry
from nixferry import SigningKey, VerifyingKey

DRV_OUT = "/nix/store/jgs69zx98r4fpm73d82y357pps9llcic-nixspec-drv"


def test_copy_trusts_nixs_default_keys_and_its_own(
    signed_cache: pathlib.Path, vectors: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    src = nixferry.open_store(f"file://{signed_cache}")
    # Nix's default trusted-public-keys (cache.nixos.org's key) do not
    # include the key the vectors are signed with: the input-addressed
    # path is refused, the content-addressed one copied.
    refused = nixferry.copy(src, f"file://{tmp_path / 'refused'}", [DRV_OUT], raise_on_failure=False)
    assert [p for p, _ in refused.failed] == [DRV_OUT]
    assert "not signed by a trusted key (signed by nixspec-test-1)" in refused.failed[0][1]
    assert refused.copied == 1

    # Signing with the key trusts it, as Nix trusts its secret-key-files.
    key = SigningKey.from_file(vectors / "keys" / "nixspec-test-1.secret")
    summary = nixferry.copy(src, f"file://{tmp_path / 'own'}", [DRV_OUT], secret_keys=[key])
    assert summary.is_complete and summary.copied == 2

    # Configured keys replace the default; the own keys stay trusted.
    other = SigningKey.generate("other-1")
    summary = nixferry.copy(
        src, f"file://{tmp_path / 'both'}", [DRV_OUT], trusted_keys=[other.verifying_key], secret_keys=[key]
    )
    assert summary.is_complete
    with pytest.raises(nixferry.CopyError) as refusal:
        nixferry.copy(src, f"file://{tmp_path / 'other'}", [DRV_OUT], trusted_keys=[other.verifying_key])
    assert [p for p, _ in refusal.value.failed] == [DRV_OUT]
    summary_of_refusal = refusal.value.summary
    assert summary_of_refusal is not None and summary_of_refusal.copied == 1
    trusted = VerifyingKey.from_file(vectors / "keys" / "nixspec-test-1.public")
    summary = nixferry.copy(src, f"file://{tmp_path / 'given'}", [DRV_OUT], trusted_keys=trusted)
    assert summary.is_complete
