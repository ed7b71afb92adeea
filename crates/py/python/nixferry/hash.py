"""Nix hashes: base-32, hex, base64 and SRI forms.

>>> h = NixHash.compute("sha256", b"hello\\n")
>>> NixHash.parse(h.to_sri()) == h
True
"""

from __future__ import annotations

from ._native import NixHash, nix32_decode, nix32_encode

__all__ = ["NixHash", "nix32_decode", "nix32_encode"]
