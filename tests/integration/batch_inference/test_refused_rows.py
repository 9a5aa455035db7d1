"""Batch inference over a features table that another tool wrote, with rows that break the
dataset's rules: each such row is reported (its reason in the predictions table and in the run's
result), never predicted, and every input row still has exactly one row."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

import numpy as np
import pytest

from mlplatform.connectors.iceberg_tables import load_table
from mlplatform.inference.batch.runner import run_batch_inference
from mlplatform.sample_data.synthetic_features import append_features, features_table_rows
from mlplatform.settings import Settings
from mlplatform.training.retrain import retrain
from tests.helpers import module_settings

pytestmark = pytest.mark.integration


def test_rows_that_break_the_rules_are_reported_not_predicted(isolated: Settings) -> None:
    s = module_settings(isolated, "refused", actor_pool_min=1, actor_pool_max=1)
    append_features(s, 600, seed=8)
    assert retrain(s, on_ray=False).decision == "promote"
    first, second = s.feature_columns[:2]
    low, high = s.dataset_spec.ranges[first]
    bad = [
        ({first: low - 500}, f"out_of_range:{first}"),
        ({second: high + 1e6}, f"out_of_range:{second}"),
        ({first: float("nan")}, f"not_finite:{first}"),
        ({second: float("inf")}, f"not_finite:{second}"),
        ({first: None}, f"missing_value:{first}"),
    ]
    columns = {
        s.key_column: [f"foreign-{i}" for i in range(len(bad) + 1)],
        **{name: [1.0] * (len(bad) + 1) for name in s.feature_columns},
        s.label_column: np.zeros(len(bad) + 1, dtype=np.int32),
        "ingested_at": [datetime.now()] * (len(bad) + 1),
    }
    for i, (values, _) in enumerate(bad):
        for name, value in values.items():
            columns[name][i] = value
    load_table(s, s.features_table).append(features_table_rows(s, columns))

    result = run_batch_inference(s)

    expected = Counter(reason for _, reason in bad)
    assert result.refused_rows == dict(expected)
    assert result.predicted_rows == result.input_rows == 600 + len(bad) + 1
    rows = load_table(s, s.predictions_table).scan().to_arrow().to_pylist()
    keys = [row[s.key_column] for row in rows]
    assert len(keys) == len(set(keys)) == result.input_rows  # one row per input row
    foreign = {row[s.key_column]: row for row in rows if row[s.key_column].startswith("foreign")}
    for i, (_, reason) in enumerate(bad):
        row = foreign[f"foreign-{i}"]
        assert row["reason"] == reason
        assert (row["class_index"], row["label"], row["probabilities"]) == (None, None, None)
    valid = foreign[f"foreign-{len(bad)}"]
    assert valid["reason"] is None and valid["label"] in s.label_names
    assert sum(row["reason"] is None for row in rows) == result.input_rows - len(bad)
