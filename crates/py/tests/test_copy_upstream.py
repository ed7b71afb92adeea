"""Upstream-aware copies: ``copy(..., upstreams=[...])`` leaves out of a
binary cache the paths an upstream serves with a trusted signature (or a
content address that verifies)."""

from __future__ import annotations

import pathlib
import shutil

import nixferry
from nixferry import VerifyingKey

DRV_OUT = "/nix/store/jgs69zx98r4fpm73d82y357pps9llcic-nixspec-drv"
HI = "/nix/store/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt"


def test_paths_an_upstream_serves_are_not_copied(
    signed_cache: pathlib.Path, vectors: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    # The upstream: another copy of the signed cache.
    upstream = tmp_path / "upstream"
    shutil.copytree(signed_cache, upstream)
    trusted = VerifyingKey.from_file(vectors / "keys" / "nixspec-test-1.public")
    src = nixferry.open_store(f"file://{signed_cache}")

    events: list[nixferry.CopyEvent] = []
    summary = nixferry.copy(
        src,
        f"file://{tmp_path / 'all-upstream'}",
        [DRV_OUT],
        trusted_keys=trusted,
        upstreams=[f"file://{upstream}"],
        progress=events.append,
    )
    assert (summary.copied, summary.skipped, summary.upstream) == (0, 0, 2)
    assert summary.is_complete
    found = sorted((e.path, e.upstream) for e in events if isinstance(e, nixferry.PathFoundUpstream))
    assert found == [(HI, f"file://{upstream}"), (DRV_OUT, f"file://{upstream}")]
    planned = [e for e in events if isinstance(e, nixferry.CopyPlanned)]
    assert [(p.closure, p.missing) for p in planned] == [(2, 0)]
    assert "upstream=2" in repr(summary)

    # Without the key, only the content-addressed path is vouched for by
    # the upstream; the other one is copied (signatures not checked).
    summary = nixferry.copy(
        src,
        f"file://{tmp_path / 'ca-only'}",
        [DRV_OUT],
        check_sigs=False,
        upstreams=[nixferry.open_store(f"file://{upstream}")],
    )
    assert (summary.copied, summary.upstream) == (1, 1)

    # Without upstreams, everything is copied.
    summary = nixferry.copy(src, f"file://{tmp_path / 'none'}", [DRV_OUT], trusted_keys=trusted)
    assert (summary.copied, summary.upstream) == (2, 0)


def test_an_upstream_that_fails_is_left_out(
    signed_cache: pathlib.Path, vectors: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    trusted = VerifyingKey.from_file(vectors / "keys" / "nixspec-test-1.public")
    refused = "http://127.0.0.1:1?retries=0"
    events: list[nixferry.CopyEvent] = []
    summary = nixferry.copy(
        f"file://{signed_cache}",
        f"file://{tmp_path / 'dst'}",
        [DRV_OUT],
        trusted_keys=trusted,
        upstreams=[refused],
        upstream_timeout=5.0,
        progress=events.append,
    )
    assert (summary.copied, summary.upstream) == (2, 0)
    failed = [e for e in events if isinstance(e, nixferry.UpstreamFailed)]
    assert [e.upstream for e in failed] == [refused]
    assert "connection" in failed[0].error.lower()
