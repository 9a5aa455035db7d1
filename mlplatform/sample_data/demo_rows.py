"""Demo raw data: rows from the configured dataset's bundled scikit-learn data with noise, plus
malformed rows."""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlplatform.dataset.spec import DatasetSpec, load_spec
from mlplatform.settings import Settings

MalformedKind = tuple[str, Callable[[str], str]]


def malformed_kinds(spec: DatasetSpec) -> tuple[MalformedKind, ...]:
    """One example of each kind of malformed CSV line the Flink job must quarantine, with its
    reason: every other field of the line is valid."""
    features = spec.features
    good = [
        f"{(f.min + f.max) / 2:.3f}" if f.type == "double" else f"{int(f.min)}" for f in features
    ]

    def line(key: str, values: list[str], label: str = "0") -> str:
        return ",".join([key, *values, label])

    def replace(i: int, value: str) -> list[str]:
        return [*good[:i], value, *good[i + 1 :]]

    numeric = [i for i, f in enumerate(features) if f.type == "double"] or [0]
    n_a, n_b, n_c = numeric[0], numeric[min(1, len(numeric) - 1)], numeric[min(2, len(numeric) - 1)]
    too_big = f"{features[n_c].max + (features[n_c].max - features[n_c].min) + 1}"
    bad_label = str(len(spec.label_names) + 4)
    return (
        ("missing_fields", lambda key: line(key, good[:-1])),
        (f"not_a_number:{features[n_b].name}", lambda key: line(key, replace(n_b, "abc"))),
        (f"out_of_range:{features[n_c].name}", lambda key: line(key, replace(n_c, too_big))),
        (f"not_finite:{features[n_a].name}", lambda key: line(key, replace(n_a, "NaN"))),
        (f"out_of_range:{spec.label_column}", lambda key: line(key, good, bad_label)),
        (f"missing_key:{spec.key_column}", lambda key: line("", good)),
        ("extra_fields", lambda key: line(key, good) + ",extra"),
    )


# Iris's kinds, for the tests and the demo that use the default dataset.
MALFORMED_KINDS = malformed_kinds(load_spec("iris"))


@dataclass(frozen=True)
class RawBatch:
    path: Path
    valid_rows: int
    malformed_rows: int


def header(s: Settings) -> str:
    return ",".join([s.key_column, *s.feature_columns, s.label_column])


def _format(value: float, kind: str) -> str:
    return f"{int(round(value))}" if kind == "int" else f"{value:.3f}"


def demo_rows(spec: DatasetSpec, n_rows: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """n_rows rows of the spec's scikit-learn data, with noise of a tenth of each column's
    standard deviation, clipped into the spec's ranges: (features, labels)."""
    if spec.sklearn_loader is None:
        raise ValueError(f"dataset {spec.name} names no sklearn_loader: no demo data for it")
    data = getattr(importlib.import_module("sklearn.datasets"), spec.sklearn_loader)()
    if data.data.shape[1] != len(spec.features):
        raise ValueError(
            f"dataset {spec.name}: {spec.sklearn_loader} gives {data.data.shape[1]} columns, "
            f"the spec names {len(spec.features)} features"
        )
    picks = rng.integers(0, len(data.target), size=n_rows)
    noise = rng.normal(0.0, 0.1, size=(n_rows, data.data.shape[1])) * data.data.std(axis=0)
    low = np.array([f.min for f in spec.features])
    high = np.array([f.max for f in spec.features])
    return np.clip(data.data[picks] + noise, low, high), data.target[picks]


def write_demo_raw(s: Settings, n_rows: int, n_malformed: int, seed: int = 0) -> RawBatch:
    """Write one CSV file into the landing folder: n_rows valid rows and n_malformed bad ones."""
    spec = s.dataset_spec
    rng = np.random.default_rng(seed)
    values, labels = demo_rows(spec, n_rows, rng)
    kinds = malformed_kinds(spec)
    batch = uuid.uuid4().hex[:12]
    lines = [header(s)]
    lines += [
        ",".join(
            [f"{batch}-{i}", *(_format(v, f.type) for v, f in zip(x, spec.features, strict=True))]
            + [str(y)]
        )
        for i, (x, y) in enumerate(zip(values, labels, strict=True))
    ]
    lines += [kinds[i % len(kinds)][1](f"{batch}-bad-{i}") for i in range(n_malformed)]
    order = rng.permutation(len(lines) - 1) + 1
    landing = s.resolved_landing_dir
    landing.mkdir(parents=True, exist_ok=True)
    path = landing / f"raw-{batch}.csv"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join([lines[0], *(lines[i] for i in order)]) + "\n")
    tmp.rename(path)  # atomic: the job never sees half a file
    return RawBatch(path=path, valid_rows=n_rows, malformed_rows=n_malformed)


def demo_events(s: Settings, n_rows: int, prefix: str, seed: int = 0) -> list[dict]:
    """n_rows valid raw events (the dataset's columns, as the raw-events topic carries them),
    with event ids `<prefix>-<i>`."""
    spec = s.dataset_spec
    values, labels = demo_rows(spec, n_rows, np.random.default_rng(seed))
    return [
        {
            s.key_column: f"{prefix}-{i}",
            **{
                f.name: int(round(v)) if f.type == "int" else round(float(v), 3)
                for v, f in zip(x, spec.features, strict=True)
            },
            s.label_column: int(y),
        }
        for i, (x, y) in enumerate(zip(values, labels, strict=True))
    ]
