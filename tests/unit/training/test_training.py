"""mlplatform.training.split and evaluate (no Iceberg needed)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlplatform.settings import Settings
from mlplatform.training.retrain import evaluate, split

pytestmark = pytest.mark.unit


@pytest.fixture
def settings() -> Settings:
    return Settings(_env_file=None, seed=7, holdout_fraction=0.25)


def _frame(s: Settings, counts: tuple[int, ...] = (40, 40, 20)) -> pd.DataFrame:
    labels = np.concatenate([np.full(n, label) for label, n in enumerate(counts)])
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.uniform(0, 10, size=(len(labels), len(s.feature_columns))))
    frame.columns = s.feature_columns
    frame[s.label_column] = labels
    return frame


def test_split_sizes(settings: Settings) -> None:
    train, holdout = split(settings, _frame(settings))
    assert len(holdout) == 25 and len(train) == 75
    assert set(train.index).isdisjoint(holdout.index)
    assert set(train.index) | set(holdout.index) == set(range(100))


def test_split_is_deterministic_for_a_seed(settings: Settings) -> None:
    frame = _frame(settings)
    a_train, a_hold = split(settings, frame)
    b_train, b_hold = split(settings, frame)
    assert list(a_train.index) == list(b_train.index)
    assert list(a_hold.index) == list(b_hold.index)
    other = settings.model_copy(update={"seed": 8})
    assert sorted(split(other, frame)[1].index) != sorted(a_hold.index)


def test_split_is_stratified(settings: Settings) -> None:
    frame = _frame(settings, counts=(40, 40, 20))
    train, holdout = split(settings, frame)
    assert holdout[settings.label_column].value_counts().to_dict() == {0: 10, 1: 10, 2: 5}
    assert train[settings.label_column].value_counts().to_dict() == {0: 30, 1: 30, 2: 15}


def test_split_without_stratification_for_singleton_class(settings: Settings) -> None:
    frame = _frame(settings, counts=(20, 19, 1))
    train, holdout = split(settings, frame)
    assert len(train) + len(holdout) == 40
    assert len(holdout) == 10


class _Fixed:
    def __init__(self, predictions: list[int]) -> None:
        self.predictions = np.array(predictions)
        self.seen: np.ndarray | None = None

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.seen = x
        return self.predictions


def test_evaluate_perfect_and_partial(settings: Settings) -> None:
    frame = _frame(settings, counts=(2, 1, 1))  # labels 0, 0, 1, 2
    perfect = evaluate(settings, _Fixed([0, 0, 1, 2]), frame)
    assert perfect == {
        "accuracy": 1.0,
        "macro_f1": 1.0,
        "precision": {"setosa": 1.0, "versicolor": 1.0, "virginica": 1.0},
        "recall": {"setosa": 1.0, "versicolor": 1.0, "virginica": 1.0},
        "confusion_matrix": [[2, 0, 0], [0, 1, 0], [0, 0, 1]],
    }
    partial = evaluate(settings, _Fixed([0, 0, 1, 1]), frame)
    assert partial["accuracy"] == pytest.approx(0.75)
    # f1 per class: 1.0, 2/3, 0.0 -> macro 5/9
    assert partial["macro_f1"] == pytest.approx(5 / 9)
    assert isinstance(partial["accuracy"], float) and isinstance(partial["macro_f1"], float)
    # "virginica" is never predicted: precision 0 (no division error), recall 0.
    assert partial["precision"] == pytest.approx(
        {"setosa": 1.0, "versicolor": 0.5, "virginica": 0.0}
    )
    assert partial["recall"] == pytest.approx({"setosa": 1.0, "versicolor": 1.0, "virginica": 0.0})
    # Rows are true classes: the one virginica row was predicted versicolor.
    assert partial["confusion_matrix"] == [[2, 0, 0], [0, 1, 0], [0, 1, 0]]


def test_evaluate_passes_features_in_settings_order(settings: Settings) -> None:
    frame = _frame(settings, counts=(2, 2))
    shuffled = frame[[settings.label_column, *reversed(settings.feature_columns)]]
    model = _Fixed([0, 0, 1, 1])
    evaluate(settings, model, shuffled)
    assert model.seen is not None and model.seen.dtype == np.float64
    np.testing.assert_array_equal(model.seen, frame[settings.feature_columns].to_numpy())
