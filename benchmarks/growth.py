"""Benchmark: per-run costs as the lake grows. For lakes of several sizes (feature rows written
straight to the tables), the time of each stage's run over one fixed 2,000-row increment.

Usage: python -m benchmarks.growth [--rows 10000 1000000 10000000 50000000]
                                   [--increment 2000] [--rows-per-day 50000]

For each size, in a namespace of its own: the features table gets the rows with event dates
spread over the past (--rows-per-day a day, newest first: a lake that grew day by day), the
stream-predictions table as many rows, and a champion is registered. An incremental batch run
then predicts the whole lake and a first maintenance run compacts its small files and expires
the set-up's commits, as if the lake's history were older than the snapshot retention (set-up,
one-off costs, reported apart). Then, timed, one increment:

- preprocess: the Flink job over a CSV of `increment` new rows (the replay check reads the
  window's event ids);
- preprocess, replay, unbounded check (peer): the same file again, the window spanning the
  whole lake: what the check cost when it read every event id;
- incremental batch inference: the rows appended since the last run (the increment);
- full batch inference (peer): every row again, what a run without increments does (sizes up
  to --full-max-rows);
- stream commit: a new stream committer (it reads its marks) commits `increment` results
  (median of three);
- maintenance: the nightly run, compaction, expiry and orphan removal over the four tables
  (the features table's partitions of the last MLP_MAINTENANCE_WINDOW_DAYS);
- maintenance, whole tables (weekly run): the same over every partition, what the nightly run
  would cost without its window;
- raw limit: read the increment's data files with pyarrow, predict_proba, in this process.

Each stage's ratio to its time on the smallest lake is the figure that matters (target: at most
1.5 up to the largest). Prints a table, saves benchmarks/results/growth.json and growth.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.ensemble import RandomForestClassifier

from checkpoints.store import CheckpointStore
from mlplatform.connectors.iceberg_tables import ensure_tables, load_table
from mlplatform.connectors.ray_runtime import connect
from mlplatform.inference.batch.request import BatchRequest
from mlplatform.inference.batch.runner import run_batch_inference
from mlplatform.inference.stream.committer import Result, StreamCommitter
from mlplatform.maintenance.tables import forget_metadata, live_entries, maintain
from mlplatform.preprocess.batch import FlinkJobError, preprocess
from mlplatform.registry import model_registry
from mlplatform.sample_data.demo_rows import header
from mlplatform.sample_data.synthetic_features import feature_rows, features_table_rows
from mlplatform.settings import Settings

RESULTS = Path(__file__).parent / "results"
CHUNK_ROWS = 1_000_000
STAGES = (
    "preprocess",
    "preprocess, replay, unbounded check",
    "incremental batch inference",
    "full batch inference (peer)",
    "stream commit",
    "maintenance",
    "maintenance, whole tables (weekly run)",
    "raw limit",
)
TARGET_RATIO = 1.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rows", type=int, nargs="+", default=[10_000, 1_000_000, 10_000_000, 50_000_000]
    )
    parser.add_argument("--increment", type=int, default=2_000)
    parser.add_argument("--rows-per-day", type=int, default=50_000)
    parser.add_argument("--full-max-rows", type=int, default=10_000_000)
    return parser.parse_args(argv)


def lake_rows(s: Settings, rows: int, offset: int, rows_per_day: int) -> pa.Table:
    """Rows offset..offset+rows of a lake that received rows_per_day rows a day, newest first:
    each row's event time (and date) is its day's."""
    data = feature_rows(s, rows, seed=offset)
    today = np.datetime64(datetime.now(UTC).date(), "D")
    days = (offset + np.arange(rows)) // rows_per_day
    stamps = (today - days.astype("timedelta64[D]")).astype("datetime64[us]")
    columns = {name: data[name] for name in [s.key_column, *s.feature_columns, s.label_column]}
    return features_table_rows(s, {**columns, "ingested_at": stamps})


def stream_rows(s: Settings, rows: int, offset: int) -> pa.Table:
    table = load_table(s, s.stream_predictions_table)
    keys = [f"old-{offset + i}" for i in range(rows)]
    return pa.table(
        {
            s.key_column: keys,
            "class_index": np.ones(rows, dtype=np.int32),
            "label": ["versicolor"] * rows,
            "probabilities": [[0.1, 0.8, 0.1]] * rows,
            "model_version": np.ones(rows, dtype=np.int32),
            "message_id": keys,
            "predicted_at": np.full(rows, np.datetime64("2026-01-01T00:00:00", "us")),
        },
        schema=table.schema().as_arrow(),
    )


def build_lake(s: Settings, rows: int, rows_per_day: int) -> float:
    """The features and stream-predictions tables with `rows` rows each; seconds."""
    started = time.perf_counter()
    ensure_tables(s)
    for name, make in (
        (s.features_table, lambda n, o: lake_rows(s, n, o, rows_per_day)),
        (s.stream_predictions_table, lambda n, o: stream_rows(s, n, o)),
    ):
        table = load_table(s, name)
        with table.transaction() as transaction:
            for offset in range(0, rows, CHUNK_ROWS):
                transaction.append(make(min(CHUNK_ROWS, rows - offset), offset))
    return time.perf_counter() - started


def register_champion(s: Settings) -> RandomForestClassifier:
    data = feature_rows(s, 5_000, seed=99)
    x = np.column_stack([data[c].to_numpy() for c in s.feature_columns])
    y = data[s.label_column].to_numpy()
    model = RandomForestClassifier(n_estimators=100, random_state=s.seed).fit(x, y)
    row = model_registry.register(
        s,
        model,
        family="random_forest",
        params={"n_estimators": 100},
        metrics={"train_accuracy": float(model.score(x, y))},
        training_table="synthetic (benchmark)",
        training_snapshot_id=0,
        training_rows=len(y),
        feature_order=list(s.feature_columns),
        label_names=list(s.label_names),
    )
    model_registry.promote(s, row.version, "benchmark")
    return model


def write_increment(s: Settings, rows: int, name: str) -> Path:
    """A CSV of `rows` new valid rows in the landing folder."""
    data = feature_rows(s, rows, seed=7)
    keys = [f"inc-{uuid.uuid4().hex[:8]}-{i}" for i in range(rows)]
    columns = [keys] + [data[c].to_pylist() for c in [*s.feature_columns, s.label_column]]
    lines = [",".join(str(v) for v in row) for row in zip(*columns, strict=True)]
    s.resolved_landing_dir.mkdir(parents=True, exist_ok=True)
    path = s.resolved_landing_dir / name
    path.write_text("\n".join([header(s), *lines]) + "\n")
    return path


def timed(fn: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def stream_commit(s: Settings, rows: int, rounds: int = 3) -> float:
    """A new committer on the table (it reads every mark) commits `rows` results; the median
    of `rounds` rounds, each with a producer of its own."""
    import ray

    times = []
    for round_ in range(rounds):
        results = [
            Result(
                f"bench-p{round_}",
                seq,
                json.dumps(
                    {
                        s.key_column: f"new-{round_}-{seq}",
                        "class_index": 1,
                        "label": "versicolor",
                        "probabilities": [0.1, 0.8, 0.1],
                        "model_version": 1,
                        "message_id": f"{round_}:{seq}:0",
                        "predicted_at": "2026-12-02T12:00:00",
                    }
                ).encode(),
            )
            for seq in range(rows)
        ]
        started = time.perf_counter()
        committer = StreamCommitter.options(num_cpus=0).remote(s, s.stream_predictions_table)
        try:
            added = ray.get(committer.add.remote(results, True), timeout=600)
        finally:
            ray.kill(committer)
        assert added == rows, (added, rows)
        times.append(time.perf_counter() - started)
    return sorted(times)[rounds // 2]


def raw_limit(s: Settings, model: RandomForestClassifier, before: set[str]) -> tuple[float, int]:
    """Read the data files the increment added and predict them here: (seconds, rows)."""
    table = load_table(s, s.features_table)
    paths = [
        e.data_file.file_path for e in live_entries(table) if e.data_file.file_path not in before
    ]
    started = time.perf_counter()
    rows = 0
    for path in paths:
        data = pq.read_table(path.removeprefix("file://"), columns=s.feature_columns)
        x = np.column_stack([data[c].to_numpy() for c in s.feature_columns])
        model.predict_proba(x)
        rows += len(x)
    return time.perf_counter() - started, rows


def one_size(root: Path, rows: int, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    s = Settings(
        local_dir=str(root / f"lake-{rows}"),
        database_url=f"sqlite:///{root / f'growth-{rows}.db'}",
        namespace=f"bench_growth_{tag}_{rows}",
        features_topic=f"persistent://public/default/bench-growth-{tag}-{rows}",
        quarantine_topic=f"persistent://public/default/bench-growth-q-{tag}-{rows}",
    )
    connect(s)
    record: dict[str, Any] = {"rows": rows, "stages": {}, "setup": {}}
    record["setup"]["build_lake_s"] = round(build_lake(s, rows, args.rows_per_day), 2)
    model = register_champion(s)
    seconds, first = timed(lambda: run_batch_inference(s, BatchRequest(incremental=True)))
    record["setup"]["first_incremental_run_s"] = round(seconds, 2)
    assert first.predicted_rows == rows, first.basis
    # Steady state: the lake's history is older than the snapshot retention (its set-up
    # commits expire, as a lake that grew day by day would have them), its small files are
    # compacted once (a one-off cost, reported).
    history = s.model_copy(update={"snapshot_retention_hours": 0, "orphan_min_age_hours": 0})
    seconds, _ = timed(lambda: maintain(history, full=True))
    record["setup"]["first_maintenance_s"] = round(seconds, 2)
    files_before = {e.data_file.file_path for e in live_entries(load_table(s, s.features_table))}
    stages = record["stages"]

    path = write_increment(s, args.increment, "increment.csv")
    copy = path.read_bytes()
    seconds, result = timed(lambda: preprocess(s, run_id=f"growth-{rows}"))
    assert result.features_rows == args.increment, result
    stages["preprocess"] = seconds
    (s.resolved_landing_dir / "increment.csv").write_bytes(copy)
    days = int(rows / args.rows_per_day) + 2
    unbounded = s.model_copy(update={"replay_window_days": days})
    try:  # the peer: at 50M rows its join outgrows the local Flink cluster's managed memory
        seconds, result = timed(lambda: preprocess(unbounded, run_id=f"growth-{rows}-replay"))
        assert result.already_ingested == args.increment, result
        stages["preprocess, replay, unbounded check"] = seconds
    except FlinkJobError as error:
        record["failed"] = {"preprocess, replay, unbounded check": str(error).splitlines()[-1]}
        (s.resolved_landing_dir / "increment.csv").unlink(missing_ok=True)

    seconds, result = timed(lambda: run_batch_inference(s, BatchRequest(incremental=True)))
    assert result.predicted_rows == args.increment, result.basis
    stages["incremental batch inference"] = seconds
    stages["raw limit"], raw_rows = raw_limit(s, model, files_before)
    assert raw_rows == args.increment
    stages["stream commit"] = stream_commit(s, args.increment)
    forget_metadata()  # as the nightly flow run's fresh process finds it
    seconds, reports = timed(lambda: maintain(s))
    stages["maintenance"] = seconds
    record["maintenance"] = [r.as_row() for r in reports]
    forget_metadata()
    seconds, reports = timed(lambda: maintain(s, full=True))
    stages["maintenance, whole tables (weekly run)"] = seconds
    record["maintenance, whole tables"] = [r.as_row() for r in reports]
    if rows <= args.full_max_rows:  # last: its predictions are no part of the increment
        seconds, result = timed(lambda: run_batch_inference(s, BatchRequest()))
        stages["full batch inference (peer)"] = seconds
    record["stages"] = {k: round(v, 3) for k, v in stages.items()}
    CheckpointStore(s.resolved_database_url).engine.dispose()
    return record


def ratios(results: list[dict[str, Any]]) -> dict[str, dict[int, float | None]]:
    base = results[0]["stages"]
    out: dict[str, dict[int, float | None]] = {}
    for stage in STAGES:
        out[stage] = {}
        for record in results:
            value = record["stages"].get(stage)
            out[stage][record["rows"]] = (
                round(value / base[stage], 2) if value and base.get(stage) else None
            )
    return out


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for stage in STAGES:
        points = [
            (r["rows"], r["stages"][stage]) for r in summary["results"] if stage in r["stages"]
        ]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=stage)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("feature rows in the lake")
    ax.set_ylabel(f"seconds per {summary['increment']:,}-row increment")
    ax.set_title(f"per-run cost as the lake grows ({summary['started_at'][:10]})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started_at = datetime.now(UTC)
    tag = uuid.uuid4().hex[:6]
    root = Path(tempfile.mkdtemp(prefix=f"mlp-growth-{tag}-"))
    results = []
    try:
        for rows in sorted(args.rows):
            print(f"lake of {rows:,} rows ...", flush=True)
            results.append(one_size(root, rows, args, tag))
            print(json.dumps(results[-1]["stages"]), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    summary = {
        "benchmark": "growth",
        "started_at": started_at.isoformat(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "increment": args.increment,
        "rows_per_day": args.rows_per_day,
        "replay_window_days": Settings().replay_window_days,
        "results": results,
        "ratio_to_smallest": ratios(results),
        "target_ratio": TARGET_RATIO,
    }
    print(f"\nseconds per {args.increment:,}-row increment, and the ratio to the smallest lake")
    print(f"  {'stage':<38}" + "".join(f"{r['rows']:>14,}" for r in results))
    for stage in STAGES:
        cells = []
        for record in results:
            value = record["stages"].get(stage)
            ratio = summary["ratio_to_smallest"][stage][record["rows"]]
            cells.append("-" if value is None else f"{value:.2f}s x{ratio}")
        print(f"  {stage:<38}" + "".join(f"{c:>14}" for c in cells))
    for record in results:
        print(f"  set-up at {record['rows']:,} rows: {record['setup']}")
        for stage, error in record.get("failed", {}).items():
            print(f"  failed at {record['rows']:,} rows: {stage}: {error}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "growth.json").write_text(json.dumps(summary, indent=2, default=str))
    plot(summary, RESULTS / "growth.png")
    print(f"\nsaved {RESULTS / 'growth.json'} and growth.png", flush=True)


if __name__ == "__main__":
    main()
