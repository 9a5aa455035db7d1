"""A predictor of the user's own: how its classes are named and loaded, what the paths get from
them (probabilities in label order, or an error that says which part of the contract broke),
and batch inference's preprocessing stage (refused rows keep their reason and values, a failing
unit fails alone). The examples' classes predict what the models they stand for do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from mlplatform.dataset.prediction_record import REASON
from mlplatform.inference.batch.job import predictor_identity
from mlplatform.inference.batch.predictors import PreprocessStage
from mlplatform.inference.batch.units import ERROR, UNIT, UNIT_ROWS
from mlplatform.inference.user_predictor import UserModel, load_class, model_loader
from mlplatform.registry import model_registry
from mlplatform.registry.model_ref import ModelRef
from mlplatform.settings import Settings

STAGES = "examples/predictors/split_pipeline.py"
X, Y = load_iris(return_X_y=True)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None, local_dir=tmp_path, database_url=f"sqlite:///{tmp_path}/db.sqlite"
    )


def _register(s: Settings, model: object) -> ModelRef:
    row = model_registry.register(
        s,
        model,
        family="test",
        params={},
        metrics={},
        training_table="sklearn.load_iris",
        training_snapshot_id=0,
        training_rows=len(Y),
        feature_order=s.feature_columns,
        label_names=s.label_names,
    )
    return model_registry.model_ref(row)


def _write(tmp_path: Path, source: str) -> str:
    path = tmp_path / "mine.py"
    path.write_text(source)
    return str(path)


def test_classes_are_named_by_module_or_file_and_mistakes_say_what_is_wrong(
    tmp_path: Path,
) -> None:
    assert load_class("sklearn.tree:DecisionTreeClassifier") is DecisionTreeClassifier
    assert load_class(f"{STAGES}:Scale").__name__ == "Scale"  # relative to the project
    path = _write(tmp_path, "class Mine:\n    pass\n\nvalue = 3\n")
    assert load_class(f"{path}:Mine").__name__ == "Mine"
    with pytest.raises(ValueError, match="'package.module:Class'"):
        load_class("examples/predictors/ensemble.py")
    with pytest.raises(FileNotFoundError, match="nowhere.py"):
        load_class("nowhere.py:Mine")
    with pytest.raises(AttributeError, match=r"no class 'value' there \(classes: Mine\)"):
        load_class(f"{path}:value")


def test_the_split_pipeline_predicts_what_the_pipeline_does(settings: Settings) -> None:
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, Y)
    ref = _register(settings, pipeline)
    model = UserModel(ref, f"{STAGES}:LinearModel", f"{STAGES}:Scale", {"device": "any"})
    assert model.classes_ is None  # in label order already
    np.testing.assert_allclose(model.predict_proba(X), pipeline.predict_proba(X), rtol=1e-9)
    with pytest.raises(RuntimeError, match="asked to run on a GPU"):
        UserModel(ref, f"{STAGES}:LinearModel", None, {"device": "gpu"})
    with pytest.raises(TypeError, match="StandardScaler"):
        UserModel(_register(settings, DecisionTreeClassifier().fit(X, Y)), f"{STAGES}:Scale")


def test_the_ensemble_averages_the_run_version_and_the_versions_named(settings: Settings) -> None:
    tree = DecisionTreeClassifier(max_depth=2, random_state=0).fit(X, Y)
    without_virginica = LogisticRegression(max_iter=500).fit(X[Y < 2], Y[Y < 2])
    first, second = _register(settings, tree), _register(settings, without_virginica)
    ensemble = "examples/predictors/ensemble.py:Ensemble"
    model = UserModel(first, ensemble, options={"versions": [second.version]}, settings=settings)
    both = np.zeros((len(X), 3))
    both[:, :2] = without_virginica.predict_proba(X)
    np.testing.assert_allclose(model.predict_proba(X), (tree.predict_proba(X) + both) / 2)
    alone = UserModel(first, ensemble, settings=settings)
    np.testing.assert_allclose(alone.predict_proba(X), tree.predict_proba(X))


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("return {**batch}", "returned no 'probabilities' column"),
        ("return [1, 2]", "returned no 'probabilities' column"),
        ("return {'probabilities': np.ones((len(batch['sepal_length']), 2))}", r"shape \(\d+, 2\)"),
    ],
)
def test_a_predictor_that_breaks_the_contract_is_named_in_the_error(
    settings: Settings, tmp_path: Path, body: str, error: str
) -> None:
    source = f"""
import numpy as np

class Broken:
    def __init__(self, context):
        pass

    def __call__(self, batch):
        {body}
"""
    ref = _register(settings, DecisionTreeClassifier().fit(X, Y))
    with pytest.raises((KeyError, ValueError), match=error):
        UserModel(ref, f"{_write(tmp_path, source)}:Broken").predict_proba(X[:5])


def test_a_preprocessor_alone_feeds_the_registry_model(settings: Settings, tmp_path: Path) -> None:
    source = """
class Double:
    def __init__(self, context):
        self.order = context.feature_order

    def __call__(self, batch):
        return {n: 2 * batch[n] for n in self.order}
"""
    tree = DecisionTreeClassifier(random_state=0).fit(2 * X, Y)
    ref = _register(settings, tree)
    s = settings.model_copy(update={"preprocessor_class": f"{_write(tmp_path, source)}:Double"})
    loaded = model_loader(s, model_registry.load_model)(ref)
    np.testing.assert_array_equal(loaded.predict_proba(X), tree.predict_proba(2 * X))
    # batch inference runs the preprocessor in a stage of its own: the model stage does not
    assert model_loader(s, model_registry.load_model, preprocess=False) is model_registry.load_model


def test_the_preprocessing_stage_keeps_refused_rows_and_fails_one_unit_alone(
    settings: Settings, tmp_path: Path
) -> None:
    source = """
class Scale:
    def __init__(self, context):
        self.order = context.feature_order

    def __call__(self, batch):
        if (batch["sepal_width"] == 3.25).any():
            raise ValueError("bad row")
        return {n: batch[n] / 10 for n in self.order}
"""
    ref = _register(settings, DecisionTreeClassifier().fit(X, Y))
    s = settings.model_copy(update={"preprocessor_class": f"{_write(tmp_path, source)}:Scale"})
    rows = [
        [5.0, 3.0, 1.5, 0.2],
        [5.0, -1.0, 1.5, 0.2],
        [6.0, 3.25, 4.0, 1.3],
        [6.0, 3.0, 4.0, 1.3],
    ]
    batch = pa.table(
        {
            UNIT: ["a", "a", "b", "c"],
            UNIT_ROWS: [2, 2, 1, 1],
            s.key_column: ["k1", "k2", "k3", "k4"],
            ERROR: ["", "", "", ""],
            **{name: [r[i] for r in rows] for i, name in enumerate(s.feature_columns)},
        }
    )
    out = PreprocessStage(ref, s.key_column, s)(batch)
    assert out[REASON].to_pylist() == [None, "out_of_range:sepal_width", None, None]
    assert out[ERROR].to_pylist()[:2] == ["", ""] and out[ERROR][3].as_py() == ""
    assert "preprocess failed" in out[ERROR][2].as_py() and "bad row" in out[ERROR][2].as_py()
    assert out["sepal_length"].to_pylist() == [0.5, 5.0, 6.0, 0.6]  # refused, failed: as they came


def test_a_batch_job_with_user_classes_is_another_job(settings: Settings) -> None:
    """Their predictions are not the registry model's: a run with them is not 'done already'
    because the model's own run succeeded on the same snapshot."""
    assert predictor_identity(settings) is None
    mine = settings.model_copy(
        update={"predictor_class": "m.py:M", "predictor_options": {"b": 1, "a": 2}}
    )
    same = mine.model_copy(update={"predictor_options": {"a": 2, "b": 1}})
    assert predictor_identity(mine) == predictor_identity(same) == 'm.py:M||{"a": 2, "b": 1}'
