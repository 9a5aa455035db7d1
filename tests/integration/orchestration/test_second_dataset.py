"""The second bundled dataset (wine: 13 features, two of them integers, its own key and label
names and per-column ranges) through the whole pipeline with no code change, only
MLP_DATASET=wine: Flink preprocessing -> Iceberg features -> training. Its namespace, topics,
landing folder and database are its own, so the Iris tables other tests use are left alone; its
registry also holds an Iris model (the platform ran the Iris demo before), which wine's training
never meets: models by name. Wine's stream consumers and Iris's run at the same moment on one
broker and Ray cluster; wine's batch inference beside Iris's, through the deployments, is the
demo's (tests/e2e/test_demo.py).
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from pyiceberg.types import DoubleType, IntegerType

from mlplatform.connectors.iceberg_tables import load_table
from mlplatform.connectors.pulsar_io import read_all
from mlplatform.inference.stream.runner import StreamResult, run_stream_inference
from mlplatform.preprocess.batch import preprocess
from mlplatform.registry import model_registry
from mlplatform.sample_data.demo_rows import malformed_kinds, write_demo_raw
from mlplatform.sample_data.synthetic_features import feature_rows, publish_features
from mlplatform.settings import TOPIC_FIELDS, Settings
from mlplatform.training.retrain import retrain
from tests.helpers import module_settings, run_together, settings_env
from tests.integration.small_champion import register_small_champion

pytestmark = pytest.mark.integration

ROWS, MALFORMED = 240, 14


@pytest.fixture(scope="module")
def own(isolated: Settings) -> dict[str, str]:
    """The module's own tables, topics and database, as settings fields."""
    env = settings_env(module_settings(isolated, "wine"))
    return {k.removeprefix("MLP_").lower(): v for k, v in env.items()}


@pytest.fixture(scope="module")
def wine(own: dict[str, str]) -> Settings:
    """The wine dataset: settings built the way a process builds them from its environment
    (MLP_DATASET=wine beside the isolation)."""
    return Settings(**own, dataset="wine")


@pytest.fixture(scope="module")
def preprocessed(wine: Settings) -> dict:
    batch = write_demo_raw(wine, ROWS, MALFORMED, seed=5)
    return {"result": preprocess(wine, run_id="it-wine"), "batch": batch}


def test_wine_rows_reach_features_with_their_own_schema(wine: Settings, preprocessed) -> None:
    assert wine.key_column == "sample_id" and len(wine.feature_columns) == 13
    result = preprocessed["result"]
    assert (result.features_rows, result.quarantined_rows) == (ROWS, MALFORMED)
    table = load_table(wine, wine.features_table)
    schema = table.schema()
    added = ["ingested_at", "event_time", "event_date"]  # wine names no derived features
    assert [f.name for f in schema.fields] == [*wine.dataset_spec.columns, *added]
    assert schema.find_field("proline").field_type == IntegerType()
    assert schema.find_field("hue").field_type == DoubleType()
    features = table.scan().to_pandas()
    assert len(features) == ROWS and features[wine.key_column].is_unique
    for f in wine.dataset_spec.features:  # every value inside its own column's range
        assert features[f.name].between(f.min, f.max).all(), f.name
    messages = [json.loads(m.data()) for m in read_all(wine, wine.features_topic)]
    assert len(messages) == ROWS
    assert set(messages[0]) == {*wine.dataset_spec.columns, "event_time", "event_date"}


def test_wine_bad_rows_are_quarantined_by_wine_column_names(wine: Settings, preprocessed) -> None:
    quarantine = load_table(wine, wine.quarantine_table).scan().to_pandas()
    kinds = malformed_kinds(wine.dataset_spec)
    expected = Counter(kinds[i % len(kinds)][0] for i in range(MALFORMED))
    assert Counter(quarantine["reason"]) == expected
    assert "not_a_number:malic_acid" in expected and "out_of_range:cultivar" in expected


@pytest.fixture(scope="module")
def iris(own: dict[str, str], wine: Settings) -> Settings:
    """The Iris dataset on wine's database, with a champion registered before wine trains."""
    s = Settings(**own)
    assert s.resolved_model_name == "iris" and s.resolved_database_url == wine.resolved_database_url
    register_small_champion(s)
    return s


@pytest.fixture(scope="module")
def trained(wine: Settings, iris: Settings, preprocessed):
    return retrain(wine)


def test_wine_trains_beside_the_iris_model_without_meeting_it(
    wine: Settings, iris: Settings, trained
) -> None:
    """Wine's first candidate is compared with no champion (not Iris's 4-feature tree), and
    promoting it leaves Iris's champion as it was."""
    assert (trained.decision, trained.reason) == ("promote", "no champion yet")
    assert model_registry.get_version(wine).version == trained.best_version
    champion = model_registry.get_version(iris)
    assert (
        champion.version != trained.best_version and champion.feature_order == iris.feature_columns
    )
    assert model_registry.list_models(wine) == {
        "iris": champion.version,
        "wine": trained.best_version,
    }
    assert {v.dataset for v in model_registry.list_versions(wine)} == {"wine"}


def test_training_on_wine_uses_its_13_features(wine: Settings, trained) -> None:
    assert trained.decision == "promote"
    assert trained.best_metrics["accuracy"] > 0.8  # noisy wine is separable; a mix-up is not
    assert trained.training_rows + trained.holdout_rows == ROWS


def test_two_consumer_pools_at_once_each_on_its_own_topics(
    wine: Settings, iris: Settings, trained
) -> None:
    """Wine's stream consumers and Iris's, started at the same moment on one broker and Ray
    cluster: each predicts its own messages with its own champion, onto its own topic."""
    own = {f: f"{getattr(wine, f)}-iris" for f in (*TOPIC_FIELDS, "stream_subscription")}
    beside = iris.model_copy(update={**own, "namespace": f"{wine.namespace}_iris"})
    publish_features(beside, feature_rows(beside, 60, seed=4))
    sent = len(read_all(wine, wine.features_topic))

    def consume(s: Settings, messages: int) -> StreamResult:
        return run_stream_inference(s, max_messages=messages, timeout_s=120)

    results = run_together(consume, [(wine, sent), (beside, 60)], timeout_s=240)
    assert [(r.published, r.failed) for r in results] == [(sent, 0), (60, 0)]
    assert [r.model_version for r in results] == [
        trained.best_version,
        model_registry.get_version(iris).version,
    ]
    for s, count in ((wine, sent), (beside, 60)):
        out = [json.loads(m.data()) for m in read_all(s, s.predictions_topic)]
        assert len({m[s.key_column] for m in out}) == count
        assert {m["label"] for m in out} <= set(s.label_names)
