"""The shared test helpers themselves: a racing thread that raises or hangs fails its test."""

from __future__ import annotations

import threading

import pytest

from tests.helpers import run_together

pytestmark = pytest.mark.unit


def test_run_together_returns_each_result_in_order() -> None:
    assert run_together(lambda i: i * 2, [(0,), (1,), (2,)], timeout_s=10) == [0, 2, 4]


def test_a_thread_that_raises_fails_the_caller() -> None:
    def commit(unit: int) -> int:
        if unit == 2:
            raise ValueError("unit 2 conflicted")
        return unit

    with pytest.raises(AssertionError, match="unit 2 conflicted"):
        run_together(commit, [(1,), (1,), (2,), (2,)], timeout_s=10)


def test_a_thread_that_hangs_fails_the_caller() -> None:
    release = threading.Event()
    try:
        with pytest.raises(AssertionError, match="2 thread"):
            run_together(lambda: release.wait(30), [(), ()], timeout_s=0.5)
    finally:
        release.set()
