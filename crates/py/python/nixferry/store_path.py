"""Store paths: parsing, validation and the paths Nix computes.

>>> p = StorePath.parse("/nix/store/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt")
>>> p.name, p.base_name == "3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt"
('nixspec-hi.txt', True)
>>> is_valid_path("/nix/store/not-a-store-path")
False
"""

from __future__ import annotations

from ._native import (
    StorePath,
    add_path,
    fixed_output_path,
    is_valid_path,
    text_path,
    validate_name,
)

__all__ = [
    "StorePath",
    "add_path",
    "fixed_output_path",
    "is_valid_path",
    "text_path",
    "validate_name",
]
