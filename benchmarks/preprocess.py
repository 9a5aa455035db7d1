"""Benchmark: the Flink preprocessing job against a plain pandas implementation of the same
cleaning, on the same raw CSV files, in one run.

Usage: python -m benchmarks.preprocess [--rows 1000000 10000000] [--bad-fraction 0.01]

For each size: CSV files with valid Iris-like rows, a share of malformed rows (one of each
reason the job knows, in turn) and a share of duplicated event ids are written once. Flink
(`mlplatform.preprocess.preprocess`, the job the preprocess flow runs: validate, classify,
write the Iceberg features and quarantine tables and the Pulsar features and quarantine
topics) processes them into a namespace and topics of their own. pandas then cleans the same
files with the same rules in one process, timed by stage: parse + validate + de-duplicate,
then the two Iceberg appends, then publishing the features to Pulsar. Both count rows per
outcome; the counts must agree (the pandas peer is the same cleaning, not a different one).

Then stream mode (--stream-rate events/s for --stream-seconds, 0 skips it): the same job in
stream mode on the Flink session cluster (started when not up), valid raw events published at
a fixed rate to the raw-events topic; the latency of each from its publish to its arrival on
the features topic, p50 and p99, once per --stream-delivery (exactly-once: rows arrive when
their checkpoint completes; at-least-once: as soon as they are sent).

Prints a JSON summary and saves it to benchmarks/results/preprocess.json.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pulsar
import pyarrow as pa
from sklearn.datasets import load_iris

from mlplatform.connectors.iceberg_tables import ensure_tables
from mlplatform.connectors.pulsar_io import (
    admin_headers,
    ensure_partitioned_topic,
    make_client,
    topic_path,
)
from mlplatform.preprocess.batch import preprocess
from mlplatform.preprocess.flink_job import (
    ALREADY_INGESTED,
    DUPLICATE_KEY,
    NOT_FINITE_TEXT,
    OVERSIZED,
)
from mlplatform.sample_data.demo_rows import MALFORMED_KINDS, demo_events, header
from mlplatform.settings import Settings, get_settings

RESULTS = Path(__file__).parent / "results"
WRITTEN = "written"


def write_raw(
    folder: Path,
    rows: int,
    bad_fraction: float,
    dup_fraction: float,
    files: int,
    s: Settings,
    seed: int = 0,
) -> dict[str, int]:
    """CSV files under folder: valid rows, malformed ones, repeated event ids; what was made."""
    rng = np.random.default_rng(seed)
    iris = load_iris()
    n_bad = int(rows * bad_fraction)
    n_dup = int(rows * dup_fraction)
    n_valid = rows - n_bad - n_dup
    picks = rng.integers(0, len(iris.target), size=n_valid)
    x = np.clip(iris.data[picks] + rng.normal(0.0, 0.1, size=(n_valid, 4)), 0.1, None)
    batch = uuid.uuid4().hex[:8]
    keys = pd.Series(np.arange(n_valid)).astype(str).radd(f"{batch}-")
    frame = pd.DataFrame({s.key_column: keys})
    for j, name in enumerate(s.feature_columns):
        frame[name] = np.round(x[:, j], 3)
    frame[s.label_column] = iris.target[picks]
    valid = frame.to_csv(header=False, index=False).splitlines()
    duplicates = [valid[i] for i in rng.integers(0, n_valid, size=n_dup)]
    bad = [MALFORMED_KINDS[i % len(MALFORMED_KINDS)][1](f"{batch}-bad-{i}") for i in range(n_bad)]
    lines = np.array(valid + duplicates + bad, dtype=object)
    lines = lines[rng.permutation(len(lines))]
    folder.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.array_split(lines, files)):
        body = "\n".join([header(s), *part]) + "\n"
        (folder / f"raw-{batch}-{i}.csv").write_text(body)
    return {"valid": n_valid, "duplicates": n_dup, "malformed": n_bad}


def _reasons(
    lines: pd.Series, n_bytes: np.ndarray, not_utf8: np.ndarray, s: Settings
) -> tuple[pd.Series, pd.DataFrame]:
    """The first failed check of each line (Arrow-backed strings), in the Flink job's order,
    and the parsed columns."""
    columns = [s.key_column, *s.feature_columns, s.label_column]
    reason = pd.Series(None, index=lines.index, dtype=object)

    def first(mask: pd.Series | np.ndarray, why: str) -> None:
        reason[_bools(mask) & reason.isna().to_numpy()] = why

    first(lines.str.fullmatch(r"\s*"), "empty_payload")
    first(n_bytes > s.max_line_bytes, OVERSIZED)
    first(not_utf8, "not_utf8")
    n_fields = lines.str.count(",") + 1
    first(n_fields < len(columns), "missing_fields")
    first(n_fields > len(columns), "extra_fields")
    fields = lines.str.split(",", n=len(columns) - 1, expand=True)
    fields = fields.reindex(columns=range(len(columns))).fillna("")
    fields.columns = columns
    fields = fields.apply(lambda c: c.str.strip())
    first(fields[s.key_column] == "", f"missing_key:{s.key_column}")
    for c in columns[1:]:
        first(fields[c] == "", f"missing_value:{c}")
    parsed = pd.DataFrame({s.key_column: fields[s.key_column]})
    for c in s.feature_columns:
        text = fields[c]
        special = _bools(text.isin(NOT_FINITE_TEXT))
        parsed[c] = pd.to_numeric(text.where(~special), errors="coerce").astype("float64")
        first(_bools(parsed[c].isna()) & ~special, f"not_a_number:{c}")
        first(special, f"not_finite:{c}")
    for f in s.dataset_spec.features:
        first(~parsed[f.name].between(f.min, f.max), f"out_of_range:{f.name}")
    integer = _bools(fields[s.label_column].str.fullmatch(r"[+-]?\d+"))
    label = pd.to_numeric(fields[s.label_column].where(integer), errors="coerce")
    label = label.astype("float64")
    first(label.isna(), f"not_an_integer:{s.label_column}")
    first((label < 0) | (label >= len(s.label_names)), f"out_of_range:{s.label_column}")
    parsed[s.label_column] = label.fillna(-1).astype("int32")
    return reason, parsed


def _bools(mask: pd.Series | np.ndarray) -> np.ndarray:
    if isinstance(mask, pd.Series):
        return mask.to_numpy(dtype=bool, na_value=False)
    return np.asarray(mask, dtype=bool)


def _read_lines(path: Path, s: Settings) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """The file's data lines as Arrow-backed strings, their lengths in bytes, and which are not
    UTF-8 (decoded with replacement characters so that the other checks can still run)."""
    raw = path.read_bytes().split(b"\n")
    skip = header(s).encode()
    raw = [line for line in raw if line and line != skip]
    try:
        text = b"\n".join(raw).decode("utf-8").split("\n")
        not_utf8 = np.zeros(len(raw), dtype=bool)
    except UnicodeDecodeError:  # the slow path, only for a file that has such lines
        text = [line.decode("utf-8", "replace") for line in raw]
        not_utf8 = np.array([t.encode() != line for t, line in zip(text, raw, strict=True)])
    n_bytes = np.fromiter(map(len, raw), dtype=np.int64, count=len(raw))
    return (
        pd.Series(pa.array(text, pa.string()), dtype=pd.ArrowDtype(pa.string())),
        n_bytes,
        not_utf8,
    )


def pandas_clean(folder: Path, known_keys: set[str], s: Settings) -> dict[str, Any]:
    """Classify every line of the folder's CSV files as the Flink job does, a file at a time;
    an event id seen in an earlier file is a duplicate (the job keeps the earliest file's)."""
    seen: set[str] = set()
    valid, rejected, counts = [], [], Counter()
    for path in sorted(folder.glob("*.csv")):
        lines, n_bytes, not_utf8 = _read_lines(path, s)
        reason, parsed = _reasons(lines, n_bytes, not_utf8, s)
        key = parsed[s.key_column]
        reason[reason.isna().to_numpy() & _bools(key.isin(known_keys))] = ALREADY_INGESTED
        open_ = reason.isna().to_numpy()
        repeated = _bools(key.where(open_).duplicated(keep="first")) | _bools(key.isin(seen))
        reason[open_ & repeated] = DUPLICATE_KEY
        ok = reason.isna().to_numpy()
        seen.update(key[ok].tolist())
        modified = datetime.fromtimestamp(path.stat().st_mtime, UTC).replace(tzinfo=None)
        rows = parsed[ok].assign(event_time=modified, event_date=modified.date())
        valid.append(rows.assign(**{d.name: d.evaluate(rows) for d in s.dataset_spec.derived}))
        bad = (reason.notna() & (reason != ALREADY_INGESTED)).to_numpy()
        rejected.append(
            pd.DataFrame({"raw": lines[bad], "reason": reason[bad], "source": str(path)})
        )
        counts.update(reason.fillna(WRITTEN).value_counts().to_dict())
    return {
        "valid": pd.concat(valid, ignore_index=True),
        "rejected": pd.concat(rejected, ignore_index=True),
        "counts": dict(sorted(counts.items())),
    }


def pandas_write(cleaned: dict[str, Any], s: Settings) -> None:
    """The two Iceberg appends of the cleaned rows."""
    catalog = ensure_tables(s)
    now = datetime.now(UTC).replace(tzinfo=None)
    features = catalog.load_table(s.table_id(s.features_table))
    valid = cleaned["valid"].assign(ingested_at=now)
    features.append(
        pa.Table.from_pandas(valid, schema=features.schema().as_arrow(), preserve_index=False)
    )
    quarantine = catalog.load_table(s.table_id(s.quarantine_table))
    rejected = cleaned["rejected"].assign(quarantined_at=now)
    quarantine.append(
        pa.Table.from_pandas(rejected, schema=quarantine.schema().as_arrow(), preserve_index=False)
    )


def pandas_publish(cleaned: dict[str, Any], s: Settings) -> None:
    """The valid rows to the features topic as JSON, keyed by event id, batched producer."""
    client = make_client(s)
    try:
        producer = client.create_producer(
            s.features_topic, batching_enabled=True, block_if_queue_full=True
        )
        valid = cleaned["valid"]
        # As the job's JSON format writes them: TIMESTAMP(3) and DATE as SQL text.
        event_time = valid["event_time"].dt.strftime("%Y-%m-%d %H:%M:%S.%f").str[:-3]
        valid = valid.assign(event_time=event_time, event_date=valid["event_date"].astype(str))
        for record in valid.to_dict("records"):
            key = record[s.key_column]
            producer.send_async(json.dumps(record).encode(), None, partition_key=key)
        producer.flush()
    finally:
        client.close()


def timed(fn, *args) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def bench_settings(base: Settings, tag: str, landing: Path) -> Settings:
    return base.model_copy(
        update={
            "namespace": f"bench_pre_{tag}",
            "features_topic": f"persistent://public/default/bench-pre-{tag}-features",
            "quarantine_topic": f"persistent://public/default/bench-pre-{tag}-quarantine",
            "stream_subscription": f"bench-pre-{tag}",
            "landing_dir": landing,
        }
    )


def drop_everything(s: Settings) -> list[str]:
    """Delete the run's tables, namespace and topics; what could not be deleted."""
    import httpx

    problems = []
    catalog = ensure_tables(s)
    for table in catalog.list_tables(s.namespace):
        catalog.purge_table(table)
    catalog.drop_namespace(s.namespace)
    for topic in (s.features_topic, s.quarantine_topic, s.raw_events_topic):
        url = f"{s.pulsar_admin_url}/admin/v2/{topic_path(topic)}/partitions?force=true"
        response = httpx.delete(url, headers=admin_headers(s), timeout=60)
        if response.status_code not in (204, 404):
            problems.append(f"{topic}: {response.status_code} {response.text[:200]}")
    return problems


def run_size(base: Settings, rows: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    tag = f"{rows}_{uuid.uuid4().hex[:6]}"
    source = work / f"raw-{tag}"
    made = write_raw(source, rows, args.bad_fraction, args.dup_fraction, args.files, base)
    lines = sum(made.values())
    size_mb = sum(p.stat().st_size for p in source.glob("*.csv")) / 1e6
    flink_s = bench_settings(base, f"flink_{tag}", work / f"landing-flink-{tag}")
    pandas_s = bench_settings(base, f"pandas_{tag}", work / f"landing-pandas-{tag}")
    result: dict[str, Any] = {"rows": lines, "made": made, "input_mb": round(size_mb, 1)}
    try:
        shutil.copytree(source, flink_s.resolved_landing_dir)
        seconds, done = timed(preprocess, flink_s, f"bench-{tag}")
        result["flink"] = {
            "seconds": round(seconds, 2),
            "rows_per_s": round(lines / seconds),
            "counts": dict(
                sorted({**done.quarantined_by_reason, WRITTEN: done.features_rows}.items())
            ),
            "already_ingested": done.already_ingested,
        }
        ensure_tables(pandas_s)  # both start from empty tables and topics
        ensure_partitioned_topic(pandas_s, pandas_s.features_topic, base.features_topic_partitions)
        clean_s, cleaned = timed(pandas_clean, source, set(), pandas_s)
        write_s, _ = timed(pandas_write, cleaned, pandas_s)
        publish_s, _ = timed(pandas_publish, cleaned, pandas_s)
        total = clean_s + write_s + publish_s
        result["pandas"] = {
            "clean_seconds": round(clean_s, 2),
            "iceberg_seconds": round(write_s, 2),
            "pulsar_seconds": round(publish_s, 2),
            "seconds": round(total, 2),
            "rows_per_s": round(lines / total),
            "clean_only_rows_per_s": round(lines / clean_s),
            "clean_and_iceberg_rows_per_s": round(lines / (clean_s + write_s)),
            "counts": {k: v for k, v in cleaned["counts"].items() if k != ALREADY_INGESTED},
        }
        result["counts_agree"] = result["flink"]["counts"] == result["pandas"]["counts"]
        result["flink_over_pandas_rows_per_s"] = round(
            result["flink"]["rows_per_s"] / result["pandas"]["rows_per_s"], 3
        )
    finally:
        result["cleanup_problems"] = drop_everything(flink_s) + drop_everything(pandas_s)
        shutil.rmtree(source, ignore_errors=True)
    return result


def stream_latency(base: Settings, rate: float, seconds: float, delivery: str) -> dict[str, Any]:
    """The stream-mode job on the session cluster with the Pulsar sinks' `delivery` guarantee:
    valid raw events published at `rate` per second for `seconds`; per event, the time from its
    publish to its arrival on the features topic (a reader started before the first publish)."""
    import threading

    from infra.flink_cluster import healthy, start_cluster, stop_cluster
    from mlplatform.preprocess.stream import start_stream, stop_stream, stream_settings

    tag = uuid.uuid4().hex[:6]
    s = stream_settings(bench_settings(base, f"stream_{tag}", Path(tempfile.gettempdir())))
    s = s.model_copy(
        update={
            "raw_events_topic": f"persistent://public/default/bench-pre-stream-{tag}-raw",
            "features_topic_partitions": 1,
            "flink_stream_delivery": delivery,
        }
    )
    started_cluster = not healthy(s)
    if started_cluster:
        start_cluster(s)
    n = int(rate * seconds)
    events = [json.dumps(e).encode() for e in demo_events(s, n + 1, prefix=f"lat-{tag}")]
    sent: dict[str, float] = {}
    arrived: dict[str, float] = {}
    start_stream(s, run_id=f"bench-{tag}")
    client = make_client(s)
    result: dict[str, Any] = {
        "delivery": delivery,
        "checkpoint_interval_s": s.flink_checkpoint_interval_s,
        "rate_per_s": rate,
        "seconds": seconds,
    }
    try:
        reader = client.create_reader(s.features_topic + "-partition-0", pulsar.MessageId.latest)
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set():
                try:
                    message = reader.read_next(200)
                except pulsar.Timeout:
                    continue
                # The job sets the key as bytes: Pulsar hands it back in base64.
                key = base64.b64decode(message.partition_key()).decode()
                arrived.setdefault(key, time.perf_counter())

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        producer = client.create_producer(s.raw_events_topic, batching_enabled=False)
        warm = f"lat-{tag}-{n}"  # the first event waits for the job's start
        producer.send(events[n])
        deadline = time.monotonic() + 300
        while warm not in arrived and time.monotonic() < deadline:
            time.sleep(0.1)
        began = time.perf_counter()
        for i in range(n):
            pause = began + i / rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            sent[f"lat-{tag}-{i}"] = time.perf_counter()
            producer.send_async(events[i], None)
        producer.flush()
        deadline = time.monotonic() + 60
        while len(arrived) < n + 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        stop.set()
        thread.join()
        latencies = np.array([arrived[k] - sent[k] for k in sent if k in arrived]) * 1000
        result.update(
            {
                "sent": n,
                "arrived": int(len(latencies)),
                "p50_ms": round(float(np.percentile(latencies, 50)), 1),
                "p99_ms": round(float(np.percentile(latencies, 99)), 1),
                "max_ms": round(float(latencies.max()), 1),
                "achieved_rate_per_s": round(n / (sent[f"lat-{tag}-{n - 1}"] - began), 1),
            }
        )
    finally:
        client.close()
        stop_stream(s)
        result["cleanup_problems"] = drop_everything(s)
        if started_cluster:
            stop_cluster(s)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="*", default=[1_000_000, 10_000_000])
    parser.add_argument("--bad-fraction", type=float, default=0.01)
    parser.add_argument("--dup-fraction", type=float, default=0.01)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--stream-rate", type=float, default=500.0, help="events/s; 0: skip")
    parser.add_argument("--stream-seconds", type=float, default=20.0)
    parser.add_argument(
        "--stream-delivery",
        nargs="*",
        default=["exactly-once", "at-least-once"],
        choices=["exactly-once", "at-least-once"],
        help="one stream run each",
    )
    args = parser.parse_args()
    base = get_settings()
    started = datetime.now(UTC)
    summary: dict[str, Any] = {
        "benchmark": "preprocess: Flink job vs pandas, same files, same cleaning",
        "started_at": started.isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_start": os.getloadavg(),
            "flink_parallelism": base.flink_parallelism,
            "flink_mode": base.flink_mode,
            "note": "shared machine: the broker, Ray, Prefect and other jobs use the same cores",
        },
        "args": vars(args),
        "sizes": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as tmp:
        for rows in args.rows:
            summary["sizes"].append(run_size(base, rows, args, Path(tmp)))
            print(json.dumps(summary["sizes"][-1], indent=2), flush=True)
    summary["stream_latency"] = []
    for delivery in args.stream_delivery if args.stream_rate > 0 else []:
        run = stream_latency(base, args.stream_rate, args.stream_seconds, delivery)
        summary["stream_latency"].append(run)
        print(json.dumps(run, indent=2), flush=True)
    summary["machine"]["loadavg_end"] = os.getloadavg()
    summary["seconds"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "preprocess.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
