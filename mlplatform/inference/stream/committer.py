"""The one writer of the stream predictions table for a pool of stream actors.

The actors hand it their results (`add`) and acknowledge their inputs once the call returns:
everything handed in during `stream_commit_interval_s` goes into Iceberg in one snapshot. So the
table gets one snapshot per interval whatever the number of actors, no two actors' commits
conflict, and the Iceberg work (Parquet, manifests, the catalog) runs in a process of its own
instead of sharing a consumer's interpreter lock.

De-duplication: a result comes with its producer (one per input partition, see
`consumer`) and its input's sequence id. A result at or below the producer's high-water
mark, committed or handed in, is dropped: an actor restarted after a crash hands in again what
its predecessor had handed in or committed, and its `add` returns once those are committed, so
its inputs are acknowledged only then. Every snapshot's summary records every producer's mark
(`mlp.hwm.<producer>`), not only those of its own rows, so that expiring snapshots loses none.

Source marks: each result may also carry the raw event's position that the Flink job read it
from (`Result.source`, `Result.source_seq`). Every snapshot records each producer's highest one
per raw-events partition (`mlp.src.<producer>.<source>`), so a restarted actor knows which raw
events its partition's committed results came from and can drop the Flink job's at-least-once
replays of them (`consumer`'s step 2).

Order: the marks assume that an actor's results come in the order it sent them, but Ray runs an
async actor's calls in the order their arguments are ready (a large hand-off waits for the
object store, a small one behind it does not), so a later hand-off could set the mark above an
earlier one's results and have them dropped unwritten. Each hand-off therefore carries its
sender (one per actor incarnation) and its number, and waits for its predecessor's turn.

Crash-only: a commit that fails ends this process. Ray restarts it from the table's state, and
every actor waiting on it fails its poll and is restarted in turn: the broker redelivers what no
one acknowledged, and the marks drop what is already in the table.

Maintenance: a stream commits often, and PyIceberg's commit cost grows with the snapshots in
the table's metadata (measured: ~1 ms per snapshot, 0.6 s a commit at 800). Snapshots older than
`stream_snapshot_retention_s` are expired every minute, and the table merges its manifests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import NamedTuple

import pyarrow as pa
import ray
from pyarrow import json as pa_json
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot

from mlplatform.connectors.iceberg_tables import load_table, transaction
from mlplatform.inference.stream.partitions import source_mark_name
from mlplatform.settings import Settings

logger = logging.getLogger(__name__)

HWM_PREFIX = "mlp.hwm."
SOURCE_PREFIX = "mlp.src."
MERGE_MANIFESTS = {"commit.manifest-merge.enabled": "true"}
EXPIRE_EVERY_S = 60.0
# A hand-off whose predecessor has not come in by then fails (its sender is restarted).
TURN_TIMEOUT_S = 120.0


def merge_marks(into: dict[str, int], marks: dict[str, int]) -> dict[str, int]:
    for name, seq in marks.items():
        into[name] = max(into.get(name, -1), seq)
    return into


def snapshot_marks(snapshot: Snapshot | None, prefix: str = HWM_PREFIX) -> dict[str, int]:
    """The marks (high-water marks, or source marks with SOURCE_PREFIX) one snapshot's summary
    records."""
    props = snapshot.summary.additional_properties if snapshot and snapshot.summary else {}
    return {k[len(prefix) :]: int(v) for k, v in props.items() if k.startswith(prefix)}


def high_water_marks(table: Table, prefix: str = HWM_PREFIX) -> dict[str, int]:
    """Each producer's highest sequence id (or source position) in the table's summaries."""
    marks: dict[str, int] = {}
    for snapshot in table.snapshots():
        merge_marks(marks, snapshot_marks(snapshot, prefix))
    return marks


class Result(NamedTuple):
    """One prediction to append, as published: a JSON object with the table's columns
    (`predicted_at` in ISO format). `producer` None: not de-duplicated (shared subscriptions).
    `source`: the raw-events partition the input came from through Flink, `source_seq` its
    position there (None: the input carried none)."""

    producer: str | None
    sequence_id: int
    payload: bytes
    source: str | None = None
    source_seq: int = -1


def _json_type(kind: pa.DataType) -> pa.DataType:
    """The type Arrow's JSON reader parses into (it has no large strings or lists)."""
    if pa.types.is_large_string(kind):
        return pa.string()
    if pa.types.is_large_list(kind):
        return pa.list_(kind.value_field.with_type(_json_type(kind.value_type)))
    return kind


def to_arrow(payloads: list[bytes], schema: pa.Schema) -> pa.Table:
    """The JSON results as a table of `schema`, parsed by Arrow (other fields are ignored)."""
    parse = pa.schema([f.with_type(_json_type(f.type)) for f in schema])
    options = pa_json.ParseOptions(explicit_schema=parse, unexpected_field_behavior="ignore")
    data = pa_json.read_json(pa.py_buffer(b"\n".join(payloads)), parse_options=options)
    return data.select(schema.names).cast(schema)


class _Batch:
    """What is handed in for the next commit, and the future its callers wait on."""

    def __init__(self) -> None:
        self.rows: list[bytes] = []
        self.marks: dict[str, int] = {}
        self.sources: dict[str, int] = {}
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


@ray.remote(max_restarts=-1, max_task_retries=0)
class StreamCommitter:
    """See the module's text; `add` is its one method."""

    def __init__(self, s: Settings, table_name: str) -> None:
        self.s = s
        self.table = load_table(self.s, table_name)
        if any(self.table.properties.get(k) != v for k, v in MERGE_MANIFESTS.items()):
            with self.table.transaction() as tx:
                tx.set_properties(MERGE_MANIFESTS)
        self.committed = high_water_marks(self.table)
        self.committed_sources = high_water_marks(self.table, SOURCE_PREFIX)
        self.committing: dict[str, int] = {}
        self.committing_sources: dict[str, int] = {}
        self.expired_at = time.monotonic()
        self.batch: _Batch | None = None
        self.turns: dict[str, int] = {}  # sender -> the number of its next hand-off
        self.turn: asyncio.Condition | None = None
        self.wake: asyncio.Event | None = None
        self.loop: asyncio.Task[None] | None = None

    def _mark(self, producer: str) -> int:
        """The producer's highest sequence id committed, being committed or handed in."""
        pending = self.batch.marks if self.batch else {}
        return max(
            self.committed.get(producer, -1),
            self.committing.get(producer, -1),
            pending.get(producer, -1),
        )

    def positions(self) -> tuple[dict[str, int], dict[str, int]]:
        """Every producer's highest sequence id, and the source marks, committed, being
        committed or handed in: what an actor that takes over a partition need not answer
        again. Handed in is enough: if this process dies before committing it, the actors'
        hand-offs fail with it, nothing after is acknowledged, and the restarted actors start
        over from the table's marks."""
        handed = (self.batch.marks, self.batch.sources) if self.batch else ({}, {})
        marks = merge_marks(merge_marks(dict(self.committed), self.committing), handed[0])
        sources = merge_marks(dict(self.committed_sources), self.committing_sources)
        return marks, merge_marks(sources, handed[1])

    async def add(
        self, results: list[Result], now: bool, sender: str | None = None, number: int = 0
    ) -> int:
        """Returns once the new ones among `results` (possibly none) and everything handed in
        before are committed: how many were new. `now`: commit without waiting for the interval
        (an actor closing). `sender` and `number` (0, 1, ... per sender): taken in that order."""
        if self.loop is None:
            self.wake = asyncio.Event()
            self.turn = asyncio.Condition()
            self.loop = asyncio.get_running_loop().create_task(self._commit_loop())
        if sender is None:
            batch, new = self._take(results, now)
        else:
            assert self.turn is not None
            async with self.turn:
                mine = lambda: self.turns.get(sender, 0) == number  # noqa: E731
                await asyncio.wait_for(self.turn.wait_for(mine), TURN_TIMEOUT_S)
                batch, new = self._take(results, now)
                self.turns[sender] = number + 1
                self.turn.notify_all()
        await asyncio.shield(batch.done)
        return new

    def _take(self, results: list[Result], now: bool) -> tuple[_Batch, int]:
        """Into the next commit: the results above their producers' marks; (the batch, how many)."""
        if self.batch is None:
            self.batch = _Batch()
        batch, new = self.batch, 0
        for result in results:
            producer = result.producer
            if producer is not None:
                if result.sequence_id <= self._mark(producer):
                    continue
                batch.marks[producer] = result.sequence_id
                if result.source is not None:
                    name = source_mark_name(producer, result.source)
                    batch.sources[name] = max(batch.sources.get(name, -1), result.source_seq)
            batch.rows.append(result.payload)
            new += 1
        if now:
            self.wake.set()  # type: ignore[union-attr]
        return batch, new

    async def _commit_loop(self) -> None:
        assert self.wake is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.s.stream_commit_interval_s)
            self.wake.clear()
            batch, self.batch = self.batch, None
            if batch is None:
                continue
            self.committing, self.committing_sources = batch.marks, batch.sources
            try:
                await asyncio.to_thread(self._commit, batch.rows, batch.marks, batch.sources)
            except BaseException:
                logger.exception("committing %d stream results failed; restarting", len(batch.rows))
                logging.shutdown()
                os._exit(1)  # crash-only: see the module's text
            self.committing, self.committing_sources = {}, {}
            batch.done.set_result(None)

    def _commit(
        self, rows: list[bytes], marks: dict[str, int], sources: dict[str, int], attempts: int = 10
    ) -> None:
        summary_marks = merge_marks(dict(self.committed), marks)
        summary_sources = merge_marks(dict(self.committed_sources), sources)
        if rows:
            data = to_arrow(rows, self.table.schema().as_arrow())
            for attempt in range(attempts):
                # Another writer's snapshot may be the current one: its marks are kept too.
                current = self.table.current_snapshot()
                merge_marks(summary_marks, snapshot_marks(current))
                merge_marks(summary_sources, snapshot_marks(current, SOURCE_PREFIX))
                summary = {f"{HWM_PREFIX}{name}": str(seq) for name, seq in summary_marks.items()}
                summary |= {f"{SOURCE_PREFIX}{n}": str(seq) for n, seq in summary_sources.items()}
                try:
                    with transaction(self.table) as tx:
                        tx.append(data, snapshot_properties=summary)
                    break
                except CommitFailedException:  # another writer committed first: retry on its
                    if attempt == attempts - 1:
                        raise
                    time.sleep(0.05 * (attempt + 1))
                    self.table = self.table.refresh()
        self.committed = summary_marks
        self.committed_sources = summary_sources
        if time.monotonic() - self.expired_at >= min(
            EXPIRE_EVERY_S, self.s.stream_snapshot_retention_s
        ):
            self._expire()

    def _expire(self) -> None:
        """Drop snapshots older than the retention from the metadata (never the current one; the
        files stay, as with Iceberg's own expire without clean-up)."""
        self.expired_at = time.monotonic()
        cutoff_ms = (time.time() - self.s.stream_snapshot_retention_s) * 1000
        current = self.table.metadata.current_snapshot_id
        old = [
            snapshot.snapshot_id
            for snapshot in self.table.snapshots()
            if snapshot.timestamp_ms < cutoff_ms and snapshot.snapshot_id != current
        ]
        if not old:
            return
        try:
            self.table.maintenance.expire_snapshots().by_ids(old).commit()
        except CommitFailedException as error:  # another writer: the next round does it
            logger.info("expiring snapshots deferred: %s", error)
            self.table = self.table.refresh()
