"""Benchmark: the CPU of one Iceberg commit as the table's history grows, PyIceberg's own
transaction against the platform's (connectors.iceberg_tables.transaction, which computes the
table metadata once per staged change instead of deep-copying it at every read).

Each commit appends `--files` small data files with a snapshot summary like batch inference's
(run id and units) to a table of a temporary SQL catalog. At each history depth (snapshots in
the table), `--commits` commits of each kind, alternated; the median CPU and wall milliseconds
per commit. Both still rewrite the metadata file that lists every snapshot: that part grows with
the history whatever the transaction.

Usage: python -m benchmarks.iceberg_commits [--depths 10 100 300 600] [--commits 5] [--files 10]
Prints a table and saves benchmarks/results/iceberg_commits.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.io.pyarrow import _dataframe_to_data_files
from pyiceberg.table import Table, Transaction

from mlplatform.connectors.iceberg_tables import transaction

RESULTS = Path(__file__).parent / "results"
KINDS: dict[str, Callable[[Table], Transaction]] = {
    "pyiceberg": lambda table: table.transaction(),
    "platform": transaction,
}


def commit(table: Table, begin: Callable[[Table], Transaction], files: list) -> None:
    summary = {"mlp.run_id": "bench", "mlp.units": json.dumps({i: 20_000 for i in range(5)})}
    with (
        begin(table) as tx,
        tx.update_snapshot(snapshot_properties=summary).fast_append() as append,
    ):
        for file in files:
            append.append_data_file(file)


def timed_ms(fn: Callable[[], None]) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return (time.process_time() - cpu) * 1000, (time.perf_counter() - wall) * 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[10, 100, 300, 600])
    parser.add_argument("--commits", type=int, default=5, help="timed commits per kind and depth")
    parser.add_argument("--files", type=int, default=10, help="data files per commit")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        catalog = SqlCatalog(
            "bench", uri=f"sqlite:///{folder}/catalog.db", warehouse=f"file://{folder}/lake"
        )
        catalog.create_namespace("bench")
        table = catalog.create_table("bench.rows", schema=pa.schema([("k", pa.string())]))
        rows = pa.table({"k": [f"row-{i}" for i in range(10)]})
        files = list(_dataframe_to_data_files(table.metadata, rows, table.io, uuid.uuid4()))
        files = (files * args.files)[: args.files]
        results = []
        for depth in sorted(args.depths):
            while len(table.metadata.snapshots) < depth:  # history made cheaply
                commit(table, transaction, files[:1])
            samples: dict[str, list[tuple[float, float]]] = {kind: [] for kind in KINDS}
            for _ in range(args.commits):  # alternated: the history grows evenly for both
                for kind, begin in KINDS.items():
                    samples[kind].append(timed_ms(lambda b=begin: commit(table, b, files)))
            row = {"snapshots": depth}
            for kind, values in samples.items():
                row[f"{kind}_cpu_ms"] = round(statistics.median(c for c, _ in values), 1)
                row[f"{kind}_wall_ms"] = round(statistics.median(w for _, w in values), 1)
            row["ratio"] = round(row["pyiceberg_cpu_ms"] / row["platform_cpu_ms"], 2)
            results.append(row)
            print(
                f"  {depth:>5} snapshots: PyIceberg {row['pyiceberg_cpu_ms']:>7.1f} ms CPU, "
                f"platform {row['platform_cpu_ms']:>7.1f} ms ({row['ratio']}x)",
                flush=True,
            )
    summary = {"args": vars(args), "results": results}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "iceberg_commits.json").write_text(json.dumps(summary, indent=2))
    print(f"saved {RESULTS / 'iceberg_commits.json'}")


if __name__ == "__main__":
    main()
