"""The stream predictions table's one writer, on real Ray and a real Iceberg table: it drops what
is at or below a producer's high-water mark (also after a restart), restarts after a failed
commit and fails its callers, and expires old snapshots without losing a mark."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime

import pytest
import ray
from ray.exceptions import RayActorError

from mlplatform.connectors.iceberg_tables import ensure_tables, load_table
from mlplatform.connectors.ray_runtime import connect
from mlplatform.inference.stream.committer import (
    MERGE_MANIFESTS,
    Result,
    StreamCommitter,
    high_water_marks,
    snapshot_marks,
)
from mlplatform.settings import Settings
from tests.helpers import module_settings, wait_until

pytestmark = pytest.mark.integration


def _payload(s: Settings, key: str, class_index: object = 1) -> bytes:
    """A result as the stream actors publish it."""
    return json.dumps(
        {
            s.key_column: key,
            "class_index": class_index,
            "label": "versicolor",
            "probabilities": [0.1, 0.8, 0.1],
            "model_version": 1,
            "message_id": f"1:{key}:0",
            "predicted_at": datetime(2026, 11, 22, 12, 0, 0).isoformat(),
        }
    ).encode()


def _results(s: Settings, producer: str | None, seqs: range, prefix: str = "") -> list[Result]:
    return [Result(producer, seq, _payload(s, f"{prefix}{producer}-{seq}")) for seq in seqs]


def _keys(s: Settings) -> list[str]:
    table = load_table(s, s.stream_predictions_table).scan().to_arrow()
    return sorted(table[s.key_column].to_pylist())


def _add(committer: ray.actor.ActorHandle, results: list[Result], timeout_s: float = 60) -> int:
    """`add`, retried while the committer is restarting."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ray.get(committer.add.remote(results, True), timeout=timeout_s)
        except RayActorError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture
def table_settings(isolated: Settings, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """A namespace of the test's own; Ray connected."""
    s = module_settings(
        isolated, f"commit{abs(hash(request.node.name)) % 10_000}", stream_commit_interval_s=0.2
    )
    ensure_tables(s)
    connect(s)
    yield s


def _committer(s: Settings) -> ray.actor.ActorHandle:
    return StreamCommitter.options(num_cpus=0).remote(s, s.stream_predictions_table)


def test_results_at_or_below_a_producers_mark_are_dropped_also_after_a_restart(
    table_settings: Settings,
) -> None:
    s = table_settings
    committer = _committer(s)
    try:
        assert _add(committer, _results(s, "p0", range(1, 6)) + _results(s, None, range(2))) == 7
        # An actor restarted after a crash hands in again what it had handed in, and more.
        assert _add(committer, _results(s, "p0", range(3, 9)) + _results(s, "p1", range(1))) == 4
        # Results not de-duplicated (shared subscriptions) always go in.
        assert _add(committer, _results(s, None, range(2), prefix="again-")) == 2
        table = load_table(s, s.stream_predictions_table)
        assert snapshot_marks(table.current_snapshot()) == {"p0": 8, "p1": 0}
        assert table.properties.items() >= MERGE_MANIFESTS.items()

        ray.kill(committer, no_restart=False)  # the restarted one reads the marks from the table
        assert _add(committer, _results(s, "p0", range(6, 11)) + _results(s, "p1", range(2))) == 3
    finally:
        ray.kill(committer)
    expected = [f"p0-{i}" for i in range(1, 11)] + ["p1-0", "p1-1"]
    expected += [f"None-{i}" for i in range(2)] + [f"again-None-{i}" for i in range(2)]
    assert _keys(s) == sorted(expected)


def test_an_actors_hand_offs_are_taken_in_their_order_whichever_comes_first(
    table_settings: Settings,
) -> None:
    """Ray runs an async actor's calls as their arguments become ready: the second hand-off
    arriving first must not raise the mark over the first one's results. Source marks go into
    the summary with them."""
    s = table_settings
    committer = _committer(s)
    first = [
        r._replace(source="r0", source_seq=r.sequence_id * 10)
        for r in _results(s, "p0", range(1, 6))
    ]
    second = _results(s, "p0", range(6, 9))
    try:
        later = committer.add.remote(second, False, "actor-a", 1)
        assert ray.wait([later], timeout=1.0)[0] == []  # waits for its predecessor
        assert ray.get(committer.add.remote(first, True, "actor-a", 0), timeout=60) == 5
        assert ray.get(later, timeout=60) == 3
        assert ray.get(committer.positions.remote()) == ({"p0": 8}, {"p0.r0": 50})
    finally:
        ray.kill(committer)
    assert _keys(s) == sorted(f"p0-{i}" for i in range(1, 9))
    summary = load_table(s, s.stream_predictions_table).current_snapshot().summary
    assert summary.additional_properties["mlp.src.p0.r0"] == "50"


def test_a_failed_commit_restarts_the_committer_and_fails_its_callers(
    table_settings: Settings,
) -> None:
    s = table_settings
    committer = _committer(s)
    try:
        assert _add(committer, _results(s, "p0", range(1, 3))) == 2
        bad = [
            Result("p0", 3, _payload(s, "p0-3")),
            Result("p0", 4, _payload(s, "p0-4", "not a number")),
        ]
        with pytest.raises(RayActorError):
            ray.get(committer.add.remote(bad, True), timeout=60)
        # The failed batch left nothing, marks included: handed in again, it goes in.
        assert _add(committer, _results(s, "p0", range(1, 5))) == 2
    finally:
        ray.kill(committer)
    assert _keys(s) == [f"p0-{i}" for i in range(1, 5)]


def test_old_snapshots_are_expired_and_no_mark_is_lost(table_settings: Settings) -> None:
    s = table_settings.model_copy(update={"stream_snapshot_retention_s": 1.0})
    committer = _committer(s)
    try:
        assert _add(committer, _results(s, "quiet", range(5, 6))) == 1
        quiet = load_table(s, s.stream_predictions_table).metadata.current_snapshot_id
        for seq in range(12):  # 12 commits over about 2.4 s
            assert _add(committer, _results(s, "busy", range(seq, seq + 1))) == 1
            time.sleep(0.2)
    finally:
        ray.kill(committer)
    table = load_table(s, s.stream_predictions_table)
    ids = [snapshot.snapshot_id for snapshot in table.snapshots()]
    assert quiet not in ids and len(ids) < 12, "no snapshot was expired"
    assert high_water_marks(table) == {"quiet": 5, "busy": 11}
    assert len(_keys(s)) == 13
    committer = _committer(s)  # a new committer knows the quiet producer's mark
    try:
        assert _add(committer, _results(s, "quiet", range(4, 7))) == 1
    finally:
        ray.kill(committer)


def test_positions_count_what_is_handed_in_before_it_is_committed(table_settings: Settings) -> None:
    """What an actor taking over a partition need not answer again: the marks of results handed
    in, not only of those committed (a lost actor's last hand-off is usually not committed yet)."""
    s = table_settings.model_copy(update={"stream_commit_interval_s": 120.0})
    committer = _committer(s)
    handed = [
        r._replace(source="r1", source_seq=r.sequence_id * 10)
        for r in _results(s, "p1", range(1, 4))
    ]
    try:
        waiting = committer.add.remote(handed, False, "actor-b", 0)
        expected = ({"p1": 3}, {"p1.r1": 30})
        wait_until(
            "the hand-off taken", lambda: ray.get(committer.positions.remote()) == expected, 30, 0.1
        )
        assert _keys(s) == []  # handed in, not committed
        assert ray.get(committer.add.remote([], True, "actor-b", 1), timeout=60) == 0
        assert ray.get(waiting, timeout=60) == 3
        assert ray.get(committer.positions.remote()) == expected
    finally:
        ray.kill(committer)
    assert _keys(s) == [f"p1-{i}" for i in range(1, 4)]
