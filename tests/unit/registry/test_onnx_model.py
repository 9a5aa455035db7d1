"""ONNX classifiers as registry versions: the face the platform predicts with (probabilities as
the model's own, from a tensor or a ZipMap), the artifact round trip with its SHA-256, and files
that are refused with what is wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from mlplatform.registry import model_registry
from mlplatform.registry.model_registry import ModelIntegrityError
from mlplatform.registry.onnx_model import OnnxModel, OnnxModelError
from mlplatform.settings import Settings

X, Y = load_iris(return_X_y=True)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None, local_dir=tmp_path, database_url=f"sqlite:///{tmp_path}/db.sqlite"
    )


def _onnx(model: object, **options: object) -> bytes:
    exported = to_onnx(model, X[:1].astype(np.float32), options=options or None)
    return exported.SerializeToString()


@pytest.mark.parametrize("zipmap", [True, False])
def test_probabilities_are_the_models_own(zipmap: bool) -> None:
    forest = RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0).fit(X, Y)
    model = OnnxModel(_onnx(forest, zipmap=zipmap))
    assert (model.zipmap, model.n_features_in_, model.classes_.tolist()) == (zipmap, 4, [0, 1, 2])
    x32 = X.astype(np.float32)  # the graph computes in float32, as the forest's own trees do
    np.testing.assert_allclose(model.predict_proba(X), forest.predict_proba(x32), atol=1e-6)
    np.testing.assert_array_equal(model.predict(X), forest.predict(x32))


def test_a_model_trained_without_a_class_reports_the_classes_it_has() -> None:
    two = LogisticRegression(max_iter=500).fit(X[Y > 0], Y[Y > 0])
    model = OnnxModel(_onnx(two))
    assert model.classes_.tolist() == [1, 2]
    np.testing.assert_allclose(model.predict_proba(X), two.predict_proba(X), atol=1e-5)


def test_registered_onnx_versions_load_only_with_their_recorded_bytes(settings: Settings) -> None:
    data = _onnx(LogisticRegression(max_iter=500).fit(X, Y))
    row = model_registry.register(
        settings,
        OnnxModel(data),
        family="external",
        params={},
        metrics={},
        training_table="sklearn.load_iris",
        training_snapshot_id=0,
        training_rows=0,
        feature_order=settings.feature_columns,
        label_names=settings.label_names,
    )
    path = Path(row.artifact_path)
    assert path.suffix == ".onnx" and path.read_bytes() == data
    loaded = model_registry.load_model(model_registry.model_ref(row))
    assert isinstance(loaded, OnnxModel) and loaded.predict(X[:3]).tolist() == [0, 0, 0]
    path.write_bytes(data[:-1] + b"\x00")
    with pytest.raises(ModelIntegrityError, match="SHA-256"):
        model_registry.load_model(model_registry.model_ref(row))


def _graph(inputs: list, nodes: list, outputs: list, domains: tuple = ("",)) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    opsets = [helper.make_opsetid(domain, 1 if domain else 17) for domain in domains]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model.SerializeToString()


def test_files_the_platform_cannot_feed_are_refused_saying_why() -> None:
    with pytest.raises(OnnxModelError, match="does not load as an ONNX model"):
        OnnxModel(b"a pickle, never loaded")
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, 4])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [None, 4])
    out = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 4])
    two_inputs = _graph([a, b], [helper.make_node("Add", ["a", "b"], ["probabilities"])], [out])
    with pytest.raises(OnnxModelError, match="one 2-D float tensor"):
        OnnxModel(two_inputs)
    custom = _graph(
        [a],
        [helper.make_node("Mystery", ["a"], ["probabilities"], domain="com.example")],
        [out],
        domains=("", "com.example"),
    )
    with pytest.raises(OnnxModelError, match="does not load"):  # custom operators: native code
        OnnxModel(custom)
    free_width = helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, "n"])
    identity = _graph([free_width], [helper.make_node("Identity", ["a"], ["probabilities"])], [out])
    with pytest.raises(OnnxModelError, match="no fixed feature count"):
        OnnxModel(identity)
