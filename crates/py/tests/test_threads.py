"""The GIL is released around heavy work, so that other Python threads run
while a call works, and calls in two threads run at the same time.

Each test is built so that the call can only finish if the other thread
runs during it: the two meet through a pipe that holds far less than the
NAR that goes through it. None of them compares times; a watchdog ends the
process if a call never returns (which is what a held GIL would cause).
"""

from __future__ import annotations

import faulthandler
import os
import pathlib
import threading
from collections.abc import Callable, Iterator

import pytest

from nixferry import nar

# Far more than a pipe holds (64 KiB on Linux).
TREE_SIZE = 8 << 20

# How long a test may take before it counts as hung.
HANG = 600


@pytest.fixture(autouse=True)
def watchdog() -> Iterator[None]:
    """Ends the process, with every thread's traceback, if a test hangs:
    a call that keeps the GIL cannot be interrupted from Python."""
    faulthandler.dump_traceback_later(HANG, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def _tree(root: pathlib.Path) -> pathlib.Path:
    root.mkdir()
    for i in range(4):
        (root / f"f{i}").write_bytes(os.urandom(TREE_SIZE // 4))
    return root


def _in_thread(work: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Starts ``work`` in a thread; the list gets its result or exception."""
    result: list[object] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as e:  # reported by the test
            result.append(e)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th, result


def test_python_feeds_a_call_that_reads(tmp_path: pathlib.Path) -> None:
    # The main thread validates a NAR that only another Python thread
    # writes into a pipe; that thread notes, chunk by chunk, that the call
    # was running while it wrote.
    data = nar.dump_bytes(_tree(tmp_path / "t"))
    fifo = tmp_path / "nar.fifo"
    os.mkfifo(fifo)
    in_call = threading.Event()
    seen: list[bool] = []

    def feed() -> None:
        with open(fifo, "wb") as f:
            for at in range(0, len(data), 1 << 16):
                seen.append(in_call.is_set())
                f.write(data[at : at + (1 << 16)])

    th, fed = _in_thread(feed)
    in_call.set()
    summary = nar.validate(fifo)
    in_call.clear()
    th.join()
    assert fed == [None], fed
    assert summary.nar_size == len(data)
    assert len(seen) == -(-len(data) // (1 << 16)) and all(seen), seen


def test_python_drains_a_call_that_writes(tmp_path: pathlib.Path) -> None:
    # The main thread dumps a tree into a pipe that only another Python
    # thread reads; that thread notes that the call was running while it
    # read each chunk.
    tree = _tree(tmp_path / "t")
    fifo = tmp_path / "nar.fifo"
    os.mkfifo(fifo)
    in_call = threading.Event()
    seen: list[bool] = []
    chunks: list[bytes] = []

    def drain() -> None:
        with open(fifo, "rb") as f:
            while True:
                running = in_call.is_set()
                chunk = f.read(1 << 16)
                if not chunk:
                    break
                seen.append(running)
                chunks.append(chunk)

    th, drained = _in_thread(drain)
    in_call.set()
    size = nar.dump(tree, fifo)
    in_call.clear()
    th.join()
    assert drained == [None], drained
    assert size == sum(map(len, chunks)) > TREE_SIZE
    # The call returns with up to a pipe's worth left to read, which the
    # thread may start reading afterwards: at most its last two reads.
    assert len(seen) > 100 and all(seen[:-2]), seen


def test_two_calls_run_at_the_same_time(tmp_path: pathlib.Path) -> None:
    # One thread dumps into a pipe that a call in another thread validates:
    # neither call can finish unless both run at once.
    tree = _tree(tmp_path / "t")
    fifo = tmp_path / "nar.fifo"
    os.mkfifo(fifo)
    dumping, dumped = _in_thread(lambda: nar.dump(tree, fifo))
    validating, validated = _in_thread(lambda: nar.validate(fifo))
    dumping.join()
    validating.join()
    [size], [summary] = dumped, validated
    assert isinstance(size, int), size
    assert isinstance(summary, nar.NarSummary), summary
    assert summary.nar_size == size
    assert summary == nar.hash_path(tree)
