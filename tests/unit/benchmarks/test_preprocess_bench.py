"""The pandas peer of benchmarks/preprocess.py classifies rows with the Flink job's reasons."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.preprocess import pandas_clean, write_raw
from mlplatform.sample_data.demo_rows import MALFORMED_KINDS, header
from mlplatform.settings import Settings

pytestmark = pytest.mark.unit


def test_each_malformed_kind_gets_its_reason(tmp_path: Path) -> None:
    s = Settings(local_dir=tmp_path)
    lines = [header(s), "k-1,5.1,3.5,1.4,0.2,0", "k-1,5.0,3.4,1.5,0.2,1", "k-2,5.1,3.5,1.4,0.2,1.5"]
    lines += [make(f"bad-{i}") for i, (_, make) in enumerate(MALFORMED_KINDS)]
    (tmp_path / "raw.csv").write_bytes(("\n".join(lines) + "\n").encode() + b"k-3,\xff,1,1,1,0\n")
    cleaned = pandas_clean(tmp_path, known_keys=set(), s=s)
    expected = {reason: 1 for reason, _ in MALFORMED_KINDS}
    expected |= {"written": 1, "duplicate_key": 1, "not_an_integer:label": 1, "not_utf8": 1}
    assert cleaned["counts"] == dict(sorted(expected.items()))
    assert list(cleaned["valid"][s.key_column]) == ["k-1"]


def test_known_keys_are_already_ingested_and_files_share_duplicates(tmp_path: Path) -> None:
    s = Settings(local_dir=tmp_path)
    made = write_raw(tmp_path / "raw", 2_000, 0.05, 0.05, files=3, s=s)
    cleaned = pandas_clean(tmp_path / "raw", known_keys=set(), s=s)
    counts = cleaned["counts"]
    assert counts["written"] == made["valid"]
    assert counts["duplicate_key"] == made["duplicates"]
    assert sum(counts.values()) == sum(made.values())
    known = set(cleaned["valid"][s.key_column][:10])
    again = pandas_clean(tmp_path / "raw", known_keys=known, s=s)["counts"]
    # A known key's repeats are already ingested too, as in the job (its COALESCE order).
    assert again["written"] == made["valid"] - 10 and again["already_ingested"] >= 10
    assert again["already_ingested"] + again["duplicate_key"] == 10 + made["duplicates"]
