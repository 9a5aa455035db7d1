"""Settings: MLP_ env names, sections, loopback/embedded defaults, resolved_* paths."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest

from mlplatform.settings import PROJECT_DIR, SECTIONS, TOPIC_FIELDS, Settings

pytestmark = pytest.mark.unit


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No MLP_ variable from the caller's shell leaks into a test."""
    import os

    for name in list(os.environ):
        if name.startswith("MLP_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_defaults_are_loopback(clean_env: pytest.MonkeyPatch) -> None:
    s = Settings(_env_file=None)
    for url in (s.pulsar_service_url, s.pulsar_admin_url, s.prefect_api_url):
        assert urlparse(url).hostname == "127.0.0.1", url
    assert urlparse(s.pulsar_service_url).port == s.pulsar_broker_port
    assert urlparse(s.pulsar_admin_url).port == s.pulsar_web_port
    assert urlparse(s.prefect_api_url).port == s.prefect_port
    assert s.ray_address == f"127.0.0.1:{s.ray_port}"


def test_defaults_are_embedded_under_local_dir(clean_env: pytest.MonkeyPatch) -> None:
    s = Settings(_env_file=None)
    assert s.local_dir == PROJECT_DIR / ".local"
    assert s.database_url is None and s.catalog_url is None and s.warehouse is None
    assert s.resolved_database_url == f"sqlite:///{s.local_dir / 'state' / 'platform.db'}"
    assert s.resolved_catalog_url.startswith("sqlite:///")
    assert s.resolved_warehouse.startswith("file://")


def test_resolved_paths_follow_local_dir(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    s = Settings(_env_file=None, local_dir=tmp_path)
    assert s.state_dir == tmp_path / "state"
    assert s.log_dir == tmp_path / "logs"
    assert s.pulsar_home == tmp_path / "pulsar"
    assert s.model_dir == tmp_path / "models"
    assert s.resolved_landing_dir == tmp_path / "landing"
    assert s.resolved_database_url == f"sqlite:///{tmp_path}/state/platform.db"
    assert s.resolved_catalog_url == f"sqlite:///{tmp_path}/state/iceberg_catalog.db"
    assert s.resolved_warehouse == f"file://{tmp_path}/warehouse"


def test_explicit_values_win_over_resolved_defaults(tmp_path: Path) -> None:
    s = Settings(
        _env_file=None,
        local_dir=tmp_path,
        database_url="postgresql://u:p@db:5432/platform",
        catalog_url="postgresql://u:p@db:5432/catalog",
        warehouse="s3://bucket/wh",
        landing_dir=tmp_path / "elsewhere",
    )
    assert s.resolved_database_url == "postgresql://u:p@db:5432/platform"
    assert s.resolved_catalog_url == "postgresql://u:p@db:5432/catalog"
    assert s.resolved_warehouse == "s3://bucket/wh"
    assert s.resolved_landing_dir == tmp_path / "elsewhere"


def test_env_overrides_with_mlp_prefix(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("MLP_LOCAL_DIR", str(tmp_path))
    clean_env.setenv("MLP_PULSAR_SERVICE_URL", "pulsar://127.0.0.1:16650")
    clean_env.setenv("MLP_FEATURES_TOPIC", "persistent://t/n/x")
    clean_env.setenv("MLP_FEATURE_COLUMNS", '["a", "b"]')
    clean_env.setenv("MLP_FEATURE_MAX", "3.5")
    clean_env.setenv("PULSAR_SERVICE_URL", "pulsar://127.0.0.1:1")  # no prefix: ignored
    s = Settings(_env_file=None)
    assert s.local_dir == tmp_path
    assert s.pulsar_broker_port == 16650
    assert s.features_topic == "persistent://t/n/x"
    assert s.feature_columns == ["a", "b"]
    assert s.feature_max == 3.5
    assert s.state_dir == tmp_path / "state"


def test_env_file_is_read(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / "custom.env"
    env_file.write_text("MLP_NAMESPACE=other\nMLP_SEED=99\nUNRELATED=1\n")
    s = Settings(_env_file=env_file)
    assert s.namespace == "other"
    assert s.seed == 99
    assert s.table_id("features") == "other.features"


def test_table_id() -> None:
    s = Settings(_env_file=None, namespace="ns")
    assert s.table_id(s.features_table) == "ns.features"


def test_a_transaction_timeout_shorter_than_three_checkpoints_is_refused(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("MLP_FLINK_CHECKPOINT_INTERVAL_S", "30")
    with pytest.raises(
        ValueError, match=r"MLP_FLINK_TRANSACTION_TIMEOUT_S \(60\) must be at least 3"
    ):
        Settings(_env_file=None)
    clean_env.setenv("MLP_FLINK_TRANSACTION_TIMEOUT_S", "90")
    assert Settings(_env_file=None).flink_transaction_timeout_s == 90


def test_each_field_is_declared_in_exactly_one_section() -> None:
    names = [set(section.model_fields) for section in SECTIONS]
    assert sum(len(n) for n in names) == len(set().union(*names)), "sections share a field"
    assert set().union(*names) == set(Settings.model_fields)


def test_every_field_is_read_from_its_mlp_name(clean_env: pytest.MonkeyPatch) -> None:
    defaults = Settings(_env_file=None).model_dump(mode="json")
    for name, field in Settings.model_fields.items():
        assert field.alias is None and field.validation_alias is None, name
        value = defaults[name]
        clean_env.setenv(
            f"MLP_{name.upper()}", value if isinstance(value, str) else json.dumps(value)
        )
    s = Settings(_env_file=None, _env_parse_none_str="null")
    assert s.model_fields_set == set(Settings.model_fields)
    assert s.model_dump(mode="json") == defaults


def test_env_example_names_every_setting_and_nothing_else() -> None:
    text = (PROJECT_DIR / ".env.example").read_text()
    named = {name[4:].lower() for name in re.findall(r"\bMLP_[A-Z0-9_]*[A-Z0-9]", text)}
    assert named - set(Settings.model_fields) == set(), "not a setting: remove or rename it"
    assert set(Settings.model_fields) - named == set(), "add these settings to .env.example"


def test_a_named_model_gets_its_own_serve_application(clean_env: pytest.MonkeyPatch) -> None:
    """The default model keeps the application "model" at "/"; a model named explicitly gets
    "model-<name>" at "/models/<name>" unless those are set; for_model follows the same rule."""
    default = Settings(_env_file=None)
    assert (default.resolved_model_name, default.serve_app_name) == ("iris", "model")
    assert default.serve_route_prefix == "/"
    wine = default.for_model("wine")
    assert (wine.serve_app_name, wine.serve_route_prefix) == ("model-wine", "/models/wine")
    assert wine.for_model("iris").serve_app_name == "model-iris"  # derived, not carried over
    clean_env.setenv("MLP_MODEL_NAME", "beer")
    clean_env.setenv("MLP_SERVE_APP_NAME", "pub")
    beer = Settings(_env_file=None)
    assert (beer.serve_app_name, beer.serve_route_prefix) == ("pub", "/models/beer")
    assert beer.for_model("ale").serve_app_name == "pub"  # set explicitly: kept
    with pytest.raises(ValueError, match="model_name"):
        default.for_model("no spaces")


def test_a_second_dataset_gets_tables_topics_and_landing_of_its_own(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Wine beside Iris on one set of services: nothing shared unless set explicitly; the
    default dataset keeps the plain names; copies and pickles keep the rule."""
    import pickle

    iris = Settings(_env_file=None, local_dir=tmp_path)
    wine = Settings(_env_file=None, local_dir=tmp_path, dataset="wine")
    assert (iris.namespace, wine.namespace) == ("ml", "ml_wine")
    assert wine.features_topic == "persistent://public/default/wine-features"
    assert wine.dead_letter_topic == "persistent://public/default/wine-features-dlq"
    assert wine.raw_events_topic == "persistent://public/default/wine-raw-events"
    assert (iris.stream_subscription, wine.stream_subscription) == (
        "stream-inference",
        "stream-inference-wine",
    )
    assert (iris.resolved_landing_dir, wine.resolved_landing_dir) == (
        tmp_path / "landing",
        tmp_path / "landing-wine",
    )
    shared = {"namespace", "stream_subscription", *TOPIC_FIELDS}
    assert all(getattr(iris, f) != getattr(wine, f) for f in shared)
    for copy in (wine.for_model("other"), pickle.loads(pickle.dumps(wine))):
        assert all(getattr(copy, f) == getattr(wine, f) for f in shared)
    clean_env.setenv("MLP_DATASET", "wine")
    clean_env.setenv("MLP_NAMESPACE", "cellar")
    mine = Settings(_env_file=None)
    assert (mine.namespace, mine.features_topic) == ("cellar", wine.features_topic)


def test_for_dataset_names_the_other_dataset_from_these_names(tmp_path: Path) -> None:
    """The demo's second dataset: by the same rule as a process with MLP_DATASET set, applied to
    names set explicitly too (a test's isolation), and back again."""
    iris = Settings(_env_file=None, local_dir=tmp_path, model_name="mine")
    wine = iris.for_dataset("wine")
    plain_wine = Settings(_env_file=None, local_dir=tmp_path, dataset="wine")
    fields = ("namespace", "stream_subscription", *TOPIC_FIELDS, "resolved_landing_dir")
    assert all(getattr(wine, f) == getattr(plain_wine, f) for f in fields)
    assert (wine.key_column, len(wine.feature_columns)) == ("sample_id", 13)
    assert wine.resolved_model_name == "wine" and iris.for_dataset("iris") is iris
    isolated = Settings(
        _env_file=None,
        local_dir=tmp_path,
        namespace="ml_t1",
        features_topic="persistent://public/default/features-t1",
        landing_dir=tmp_path / "landing-t1",
    )
    other = isolated.for_dataset("wine")
    assert (other.namespace, other.features_topic, other.resolved_landing_dir) == (
        "ml_t1_wine",
        "persistent://public/default/wine-features-t1",
        tmp_path / "landing-t1-wine",
    )
    back = other.for_dataset("iris")
    assert all(getattr(back, f) == getattr(isolated, f) for f in fields)
    assert (
        back.resolved_database_url == other.resolved_database_url == isolated.resolved_database_url
    )
