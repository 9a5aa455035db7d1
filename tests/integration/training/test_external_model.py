"""Models trained elsewhere (skops and ONNX files) imported into the registry on real Iceberg
features: checked against the dataset, scored on the holdout, promoted or rejected by the
retraining rule, and predicting in a real batch inference run (Ray) with the input order they
were fitted on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from pyiceberg.expressions import EqualTo
from skl2onnx import to_onnx
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from flows.register_model import register_model
from mlplatform.connectors.iceberg_tables import load_table
from mlplatform.inference.batch.runner import run_batch_inference
from mlplatform.registry import model_registry
from mlplatform.registry.model_registry import ModelIntegrityError
from mlplatform.sample_data.synthetic_features import append_features
from mlplatform.settings import Settings
from mlplatform.training.external_model import ModelMismatch, import_model
from tests.helpers import module_settings, settings_env, settings_in_process

pytestmark = pytest.mark.integration

ROWS = 300


@pytest.fixture(scope="module")
def lake(isolated: Settings) -> Settings:
    s = module_settings(isolated, "external")
    append_features(s, ROWS, seed=8)
    return s


@pytest.fixture(scope="module")
def features(lake: Settings) -> pd.DataFrame:
    return load_table(lake, lake.features_table).scan().to_pandas()


def _saved(model: object, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    skops.io.dump(model, path)
    return path


def test_an_external_pipeline_is_scored_promoted_and_predicts_in_batch(
    lake: Settings, features: pd.DataFrame, tmp_path: Path
) -> None:
    """A scaler + logistic regression fitted on the features in reverse order, by name: the
    registry keeps that order, and batch inference feeds it so (its predictions are the model's
    own on the same rows). A worse model imported next is rejected: the champion stays."""
    reverse = list(reversed(lake.feature_columns))
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    pipeline.fit(features[reverse], features[lake.label_column])
    result = import_model(lake, _saved(pipeline, tmp_path, "pipeline.skops"))
    assert (result.decision, result.reason) == ("promote", "no champion yet")
    assert result.feature_order == reverse and result.metrics["macro_f1"] > 0.8
    row = model_registry.get_version(lake)
    assert (row.version, row.family, row.feature_order) == (result.version, "external", reverse)
    assert row.params["source"] == "pipeline.skops" and len(row.params["source_sha256"]) == 64
    assert (row.training_rows, row.rows_available) == (0, ROWS)  # scored here, trained elsewhere

    batch = run_batch_inference(lake)
    assert batch.predicted_rows == batch.input_rows == ROWS
    table = load_table(lake, lake.predictions_table)
    predicted = table.scan(row_filter=EqualTo("run_id", batch.run_id)).to_pandas()
    assert len(predicted) == ROWS
    assert predicted["model_version"].eq(result.version).all()
    own = dict(zip(features[lake.key_column], pipeline.predict(features[reverse]), strict=True))
    pairs = zip(predicted[lake.key_column], predicted["class_index"], strict=True)
    assert all(own[key] == index for key, index in pairs)

    worse = DummyClassifier(strategy="most_frequent").fit(
        features[lake.feature_columns].to_numpy(), features[lake.label_column]
    )
    rejected = import_model(lake, _saved(worse, tmp_path, "dummy.skops"))
    assert rejected.decision == "reject" and rejected.champion_before == result.version
    assert model_registry.get_version(lake).version == result.version
    assert model_registry.list_decisions(lake)[-1].reason.startswith("imported: macro_f1")


def test_a_model_that_does_not_fit_the_dataset_is_refused_with_nothing_registered(
    lake: Settings, features: pd.DataFrame, tmp_path: Path
) -> None:
    labels = features[lake.label_column]
    three = lake.feature_columns[:3]
    before = [v.version for v in model_registry.list_versions(lake)]
    cases = [
        (LogisticRegression().fit(features[three], labels), ModelMismatch, "missing"),
        (
            LogisticRegression().fit(
                features[lake.feature_columns].to_numpy(), labels.map(dict(enumerate("abc")))
            ),
            ModelMismatch,
            "not label indexes",
        ),
        (
            LinearRegression().fit(features[lake.feature_columns].to_numpy(), labels),
            ModelMismatch,
            "not a classifier with predict_proba",
        ),
    ]
    for i, (model, error, message) in enumerate(cases):
        with pytest.raises(error, match=message):
            import_model(lake, _saved(model, tmp_path, f"bad-{i}.skops"))
    with pytest.raises(ModelMismatch, match="not the given order"):
        fitted = LogisticRegression().fit(features[lake.feature_columns], labels)
        import_model(lake, _saved(fitted, tmp_path, "named.skops"), list(reversed(three)))
    not_skops = tmp_path / "model.pkl"
    not_skops.write_bytes(b"\x80\x04 a pickle, never loaded")
    with pytest.raises(ModelIntegrityError, match="is not a skops artifact"):
        import_model(lake, not_skops)
    assert [v.version for v in model_registry.list_versions(lake)] == before


def test_the_register_model_flow_imports_and_reports_the_decision(
    lake: Settings, features: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flow behind `register-model/default`, on the Prefect server, under a model name of
    its own: its decision is an artifact of the run."""
    tree = DecisionTreeClassifier(max_depth=3, random_state=0).fit(
        features[lake.feature_columns].to_numpy(), features[lake.label_column]
    )
    env = {**settings_env(lake), "MLP_MODEL_NAME": "iris-external"}
    with settings_in_process(monkeypatch, env):
        state = register_model(path=str(_saved(tree, tmp_path, "tree.skops")), return_state=True)
    assert state.is_completed(), state
    result = state.result()
    assert (result["decision"], result["reason"]) == ("promote", "no champion yet")
    named = lake.for_model("iris-external")
    assert model_registry.get_version(named).version == result["version"]
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    [artifact] = [a for a in artifacts if a.key == "import-decision"]
    assert f"promote imported version {result['version']}" in artifact.data


def test_an_onnx_forest_is_scored_promoted_and_predicts_in_batch(
    lake: Settings, features: pd.DataFrame, tmp_path: Path
) -> None:
    """A forest exported to ONNX (a probability tensor, float32 input), under a model name of
    its own: scored, promoted, and predicting every row in a real Ray batch run as the forest
    does (float32 thresholds: the same classes)."""
    x = features[lake.feature_columns].to_numpy()
    forest = RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0)
    forest.fit(x, features[lake.label_column])
    exported = to_onnx(forest, x[:1].astype(np.float32), options={"zipmap": False})
    path = tmp_path / "forest.onnx"
    path.write_bytes(exported.SerializeToString())
    named = lake.for_model("iris-onnx")
    result = import_model(named, path)
    assert (result.decision, result.reason) == ("promote", "no champion yet")
    row = model_registry.get_version(named)
    assert row.artifact_path.endswith(".onnx") and row.params["estimator"] == "onnx from skl2onnx"
    assert result.metrics["macro_f1"] > 0.8

    batch = run_batch_inference(named)
    assert batch.predicted_rows == batch.input_rows == ROWS
    table = load_table(lake, lake.predictions_table)
    predicted = table.scan(row_filter=EqualTo("run_id", batch.run_id)).to_pandas()
    own = dict(zip(features[lake.key_column], forest.predict(x.astype(np.float32)), strict=True))
    assert predicted["model_version"].eq(result.version).all() and len(predicted) == ROWS
    pairs = zip(predicted[lake.key_column], predicted["class_index"], strict=True)
    assert all(own[key] == index for key, index in pairs)
