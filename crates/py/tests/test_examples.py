"""The examples in the docstrings run, with the stdlib's doctest: the
package's (the main tasks, as the Rust crate's docs show them), those of
the Python submodules, and those of the native module's functions and
classes."""

from __future__ import annotations

import doctest
import pathlib
import tempfile
import types

import pytest

import nixferry
from nixferry import _native, cache, errors, hash, nar, store_path

# How many examples each module's docstrings hold, so that a doctest that
# stops being found (or a module that loses its examples) fails here rather
# than passing by running nothing. Examples marked ``+SKIP`` do not count.
EXAMPLES = {
    nixferry: 37,
    nar: 7,
    hash: 2,
    store_path: 3,
    errors: 2,
    cache: 17,
}

# The native module's docstrings are written in the Rust sources, next to
# the code, and change with it: at least this many of their examples run.
NATIVE_EXAMPLES_AT_LEAST = 28


@pytest.fixture(autouse=True)
def temp_dir(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples' ``tempfile.mkdtemp()`` directories, under the test's
    own temporary directory, so that they are cleaned up."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def run_doctests(module: types.ModuleType) -> int:
    """Runs the doctests of ``module``; fails on any failure, and returns
    how many examples ran."""
    found = doctest.DocTestFinder().find(module)
    runnable = sum(1 for test in found for example in test.examples if not example.options.get(doctest.SKIP))
    # Failures are printed, and pytest shows them with the failed test.
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=False)
    assert failed == 0, f"{failed} of {attempted} examples in {module.__name__} failed (see the output)"
    assert attempted == runnable
    return attempted


@pytest.mark.parametrize("module", list(EXAMPLES), ids=lambda m: m.__name__)
def test_examples(module: types.ModuleType) -> None:
    assert run_doctests(module) == EXAMPLES[module]


def test_native_examples() -> None:
    assert run_doctests(_native) >= NATIVE_EXAMPLES_AT_LEAST


def test_package_examples_cover_the_main_tasks() -> None:
    """The package docstring shows each main task: a NAR dumped and hashed,
    a narinfo verified, a closure, a copy, a server."""
    doc = nixferry.__doc__
    assert doc is not None
    examples = "".join(e.source for e in doctest.DocTestParser().get_examples(doc))
    for call in ("nar.dump(", "nar.hash_path(", ".verify(", ".closure(", "nixferry.copy(", "nixferry.serve("):
        assert call in examples, call
