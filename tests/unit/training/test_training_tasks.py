"""tasks.training's markdown: the confusion matrix and the decision artifact (pure functions)."""

from __future__ import annotations

import pytest

from mlplatform.settings import Settings
from mlplatform.training.retrain import RetrainResult
from tasks.training import confusion_matrix_markdown, decision_markdown

pytestmark = pytest.mark.unit


def test_confusion_matrix_markdown_layout() -> None:
    matrix = [[5, 1, 0], [2, 7, 3], [0, 4, 9]]
    labels = ["setosa", "versicolor", "virginica"]
    lines = confusion_matrix_markdown(matrix, labels).splitlines()
    assert lines[0] == "| true \\ predicted | setosa | versicolor | virginica |"
    assert lines[1] == "|---|---|---|---|"
    assert lines[2:] == [
        "| setosa | **5** | 1 | 0 |",
        "| versicolor | 2 | **7** | 3 |",
        "| virginica | 0 | 4 | **9** |",
    ]


def test_confusion_matrix_markdown_one_row_per_true_class() -> None:
    matrix = [[1, 2], [3, 4]]
    lines = confusion_matrix_markdown(matrix, ["a", "b"]).splitlines()
    assert len(lines) == 2 + 2
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| a", "| b"]
    # Rows are not transposed: the row of true class "a" holds matrix[0].
    assert lines[2] == "| a | **1** | 2 |"
    assert lines[3] == "| b | 3 | **4** |"
    # Only diagonal cells are bolded.
    assert sum(line.count("**") for line in lines) == 2 * 2


def test_confusion_matrix_markdown_mismatched_sizes_raise() -> None:
    with pytest.raises(ValueError):
        confusion_matrix_markdown([[1, 0], [0, 1]], ["a", "b", "c"])


def _result(**overrides: object) -> RetrainResult:
    fields: dict = {
        "snapshot_id": 42,
        "training_rows": 150_000,
        "holdout_rows": 50_000,
        "rows_available": 3_000_000,
        "rows_used": 200_000,
        "sample_seed": 7,
        "candidates": [],
        "best_version": 5,
        "best_metrics": {
            "precision": {"a": 1.0, "b": 0.5},
            "recall": {"a": 0.75, "b": 1.0},
            "confusion_matrix": [[3, 1], [0, 1]],
        },
        "champion_before": 4,
        "champion_score": 0.9,
        "decision": "promote",
        "reason": "macro_f1 0.95 vs champion 0.90",
    }
    return RetrainResult(**{**fields, **overrides})


def test_decision_artifact_shows_rows_available_and_used() -> None:
    s = Settings(_env_file=None, label_names=["a", "b"])
    markdown = decision_markdown(s, _result())
    assert markdown.startswith("## Decision: promote version 5\n")
    assert "**200,000 rows used of 3,000,000 available** (6.7%;" in markdown
    assert "seed 7" in markdown and "150,000 training and 50,000 holdout rows" in markdown
    everything = decision_markdown(s, _result(rows_available=1_000, rows_used=1_000))
    assert "**1,000 rows used of 1,000 available** (100.0%;" in everything
