"""Pulsar Functions' registrations, state and positions in SQL (checkpoints.function_store)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from checkpoints.function_store import FunctionStore, StateChanges

pytestmark = pytest.mark.unit
FN = "public/default/wc"


@pytest.fixture
def store(tmp_path: Path) -> FunctionStore:
    return FunctionStore(f"sqlite:///{tmp_path}/platform.db")


def test_registrations_are_saved_replaced_listed_and_removed(store: FunctionStore) -> None:
    assert store.save(FN, '{"a": 1}') is True
    assert store.save(FN, '{"a": 2}') is False
    store.save("public/other/x", "{}")
    assert store.spec_json(FN) == '{"a": 2}'
    assert store.list("public/default/") == [FN]
    store.remove(FN)
    assert store.spec_json(FN) is None and store.list() == ["public/other/x"]


def test_counters_add_up_across_commits_and_count_again_after_a_delete(
    store: FunctionStore,
) -> None:
    store.commit(FN, StateChanges(increments={"a": 2, "b": 1}))
    store.commit(FN, StateChanges(increments={"a": 3}))
    assert (store.counter(FN, "a"), store.counter(FN, "b"), store.counter(FN, "c")) == (5, 1, 0)
    store.commit(FN, StateChanges(deleted_counters={"a"}, increments={"a": 1}))
    assert store.counter(FN, "a") == 1
    store.commit(FN, StateChanges(deleted_counters={"b"}))
    assert store.counter(FN, "b") == 0


def test_state_values_are_put_and_replaced(store: FunctionStore) -> None:
    store.commit(FN, StateChanges(puts={"k": b"one"}))
    store.commit(FN, StateChanges(puts={"k": b"two"}, increments={"k": 4}))
    assert store.state(FN, "k") == b"two" and store.counter(FN, "k") == 4
    assert store.state(FN, "missing") is None


def test_positions_only_move_forward(store: FunctionStore) -> None:
    store.commit(FN, StateChanges(positions={"t-partition-0": (5, 10, 0)}))
    store.commit(
        FN, StateChanges(positions={"t-partition-0": (5, 9, 3), "t-partition-1": (1, 1, 0)})
    )
    assert store.positions(FN) == {"t-partition-0": (5, 10, 0), "t-partition-1": (1, 1, 0)}
    store.commit(FN, StateChanges(positions={"t-partition-0": (6, 0, 0)}))
    assert store.positions(FN)["t-partition-0"] == (6, 0, 0)


def test_a_commit_is_all_or_nothing(store: FunctionStore) -> None:
    changes = StateChanges(increments={"a": 1}, positions={"t": (1, 1, 0)})
    changes.puts["k"] = "not bytes"  # type: ignore[assignment]  (fails inside the transaction)
    with pytest.raises(Exception):  # noqa: B017, PT011  (the driver's own error type)
        store.commit(FN, changes)
    assert store.counter(FN, "a") == 0 and store.positions(FN) == {}


def test_concurrent_instances_counting_one_key_lose_no_increment(store: FunctionStore) -> None:
    def count() -> None:
        for _ in range(20):
            store.commit(FN, StateChanges(increments={"shared": 1}))

    threads = [threading.Thread(target=count) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.counter(FN, "shared") == 80


def test_remove_with_state_forgets_counters_and_positions(store: FunctionStore) -> None:
    store.save(FN, "{}")
    store.commit(FN, StateChanges(increments={"a": 1}, positions={"t": (1, 1, 0)}))
    store.remove(FN)
    assert store.counter(FN, "a") == 1  # state outlives the registration
    store.remove(FN, state=True)
    assert store.counter(FN, "a") == 0 and store.positions(FN) == {}
