"""tasks.training.confusion_matrix_markdown, a pure function."""

from __future__ import annotations

import pytest

from tasks.training import confusion_matrix_markdown

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
