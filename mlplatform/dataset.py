"""Demo raw data: rows from scikit-learn's bundled Iris data with noise, plus malformed rows."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.datasets import load_iris

from mlplatform.settings import Settings

# One example of each kind of malformed line the Flink job must quarantine, keyed by reason.
MALFORMED_KINDS = (
    ("missing_fields", lambda key: f"{key},5.1,3.5,1.4,0"),
    ("not_a_number:sepal_width", lambda key: f"{key},5.1,abc,1.4,0.2,0"),
    ("out_of_range:petal_length", lambda key: f"{key},5.1,3.5,99.0,0.2,0"),
    ("not_finite:sepal_length", lambda key: f"{key},NaN,3.5,1.4,0.2,0"),
    ("out_of_range:label", lambda key: f"{key},5.1,3.5,1.4,0.2,7"),
    ("missing_key:event_id", lambda key: ",5.1,3.5,1.4,0.2,0"),
    ("extra_fields", lambda key: f"{key},5.1,3.5,1.4,0.2,0,extra"),
)


@dataclass(frozen=True)
class RawBatch:
    path: Path
    valid_rows: int
    malformed_rows: int


def header(s: Settings) -> str:
    return ",".join([s.key_column, *s.feature_columns, s.label_column])


def write_demo_raw(s: Settings, n_rows: int, n_malformed: int, seed: int = 0) -> RawBatch:
    """Write one CSV file into the landing folder: n_rows valid rows and n_malformed bad ones."""
    rng = np.random.default_rng(seed)
    iris = load_iris()
    picks = rng.integers(0, len(iris.target), size=n_rows)
    noisy = np.clip(iris.data[picks] + rng.normal(0.0, 0.1, size=(n_rows, 4)), 0.1, None)
    batch = uuid.uuid4().hex[:12]
    lines = [header(s)]
    lines += [
        f"{batch}-{i},{x[0]:.3f},{x[1]:.3f},{x[2]:.3f},{x[3]:.3f},{iris.target[p]}"
        for i, (x, p) in enumerate(zip(noisy, picks, strict=True))
    ]
    lines += [
        MALFORMED_KINDS[i % len(MALFORMED_KINDS)][1](f"{batch}-bad-{i}") for i in range(n_malformed)
    ]
    order = rng.permutation(len(lines) - 1) + 1
    landing = s.resolved_landing_dir
    landing.mkdir(parents=True, exist_ok=True)
    path = landing / f"raw-{batch}.csv"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join([lines[0], *(lines[i] for i in order)]) + "\n")
    tmp.rename(path)  # atomic: the job never sees half a file
    return RawBatch(path=path, valid_rows=n_rows, malformed_rows=n_malformed)
