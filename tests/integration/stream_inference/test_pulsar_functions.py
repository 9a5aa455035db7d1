"""The shipped Pulsar Functions, unmodified, on the Ray runtime against a real broker."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.tree import DecisionTreeClassifier

from mlplatform.connectors.pulsar_io import make_client, read_all
from mlplatform.inference.stream.function_spec import FunctionSpec
from mlplatform.inference.stream.pulsar_functions import champion_user_config, run_function
from mlplatform.registry import model_registry
from mlplatform.settings import PROJECT_DIR, Settings

pytestmark = pytest.mark.integration

EXAMPLE = str(PROJECT_DIR / "examples" / "functions" / "iris_functions.py")
# The model's own feature order differs from the input's: the function must reorder.
MODEL_ORDER = ["petal_length", "petal_width", "sepal_length", "sepal_width"]
INPUT_ORDER = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture(scope="module")
def registry(isolated: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("functions")
    s = isolated.model_copy(
        update={"database_url": f"sqlite:///{root / 'db.sqlite'}", "local_dir": root}
    )
    iris = load_iris()
    columns = [INPUT_ORDER.index(name) for name in MODEL_ORDER]
    model = DecisionTreeClassifier(max_depth=3, random_state=0).fit(
        iris.data[:, columns], iris.target
    )
    row = model_registry.register(
        s,
        model,
        family="decision_tree",
        params={"max_depth": 3},
        metrics={},
        training_table="iris",
        training_snapshot_id=0,
        training_rows=150,
        feature_order=MODEL_ORDER,
        label_names=list(iris.target_names),
    )
    model_registry.promote(s, row.version)
    return s


def _expected(rows: list[list[float]]) -> list[str]:
    iris = load_iris()
    columns = [INPUT_ORDER.index(name) for name in MODEL_ORDER]
    model = DecisionTreeClassifier(max_depth=3, random_state=0).fit(
        iris.data[:, columns], iris.target
    )
    return [iris.target_names[p] for p in model.predict(np.asarray(rows)[:, columns])]


def _publish(s: Settings, topic: str, bodies: list[str]) -> None:
    client = make_client(s)
    try:
        producer = client.create_producer(topic)
        for body in bodies:
            producer.send(body.encode())
    finally:
        client.close()


@pytest.mark.parametrize("classname", ["IrisPredict", "IrisPredictBulk"])
def test_example_function_answers_on_the_ray_runtime(registry: Settings, classname: str) -> None:
    tag = uuid.uuid4().hex[:6]
    spec = FunctionSpec(
        py=EXAMPLE,
        classname=classname,
        name=f"{classname.lower()}-{tag}",
        inputs=(f"persistent://public/default/fn-in-{tag}",),
        output=f"persistent://public/default/fn-out-{tag}",
        user_config=champion_user_config(registry),
    )
    iris = load_iris()
    rows = [[float(v) for v in iris.data[i]] for i in (0, 60, 120, 10, 75, 140)]
    text = [",".join(str(v) for v in row) for row in rows]
    bodies = text if classname == "IrisPredict" else [":".join(text[:3]), ":".join(text[3:])]
    _publish(registry, spec.inputs[0], bodies)
    result = run_function(registry, spec, max_messages=len(bodies), timeout_s=120)
    assert (result.processed, result.failed) == (len(bodies), 0)
    assert result.metrics == {"rows": float(len(rows))}
    answers = sorted(m.data().decode() for m in read_all(registry, spec.output))
    expected = _expected(rows)
    if classname == "IrisPredict":
        assert answers == sorted(expected)
    else:
        assert answers == sorted([",".join(expected[:3]), ",".join(expected[3:])])
    assert "setosa" in ",".join(answers)


def test_a_poison_message_ends_in_the_dead_letter_topic(registry: Settings) -> None:
    tag = uuid.uuid4().hex[:6]
    spec = FunctionSpec(
        py=EXAMPLE,
        classname="IrisPredict",
        name=f"poison-{tag}",
        inputs=(f"persistent://public/default/fn-in-{tag}",),
        output=f"persistent://public/default/fn-out-{tag}",
        user_config=champion_user_config(registry),
    )
    _publish(registry, spec.inputs[0], ["not,a,row", "5.1,3.5,1.4,0.2"])
    # Unbounded by count: the poison message is tried 1 + max_message_retries times, then sent
    # to the dead-letter topic; the good one is answered.
    result = run_function(registry, spec, timeout_s=8)
    assert (result.processed, result.failed) == (1, 1)
    assert [m.data().decode() for m in read_all(registry, spec.output)] == ["setosa"]
    dead = read_all(registry, f"{spec.inputs[0]}-{spec.name}-DLQ")
    assert [m.data().decode() for m in dead] == ["not,a,row"]
