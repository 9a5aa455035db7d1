"""mlplatform.registry.model_registry on a temporary SQLite database."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlplatform.registry import model_registry
from mlplatform.registry.model_registry import ModelIntegrityError, model_ref
from mlplatform.settings import Settings
from tests.helpers import register_constant_model

pytestmark = pytest.mark.unit


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # get_engine is cached per URL: every test gets its own database file.
    return Settings(
        _env_file=None, local_dir=tmp_path, database_url=f"sqlite:///{tmp_path}/db.sqlite"
    )


def test_register_saves_artifact_as_candidate(settings: Settings) -> None:
    row = register_constant_model(settings)
    path = Path(row.artifact_path)
    assert path.parent == settings.model_dir and path.exists()
    assert path.suffix == ".skops"
    assert row.sha256 == model_registry.sha256_of(path)
    assert row.stage == "candidate"
    stored = model_registry.get_version(settings, row.version)
    assert stored.stage == "candidate"
    assert stored.metrics == {"accuracy": 0.5}
    assert stored.feature_order == ["x"]
    assert stored.training_snapshot_id == 123


def test_versions_increase(settings: Settings) -> None:
    first, second = register_constant_model(settings, 0), register_constant_model(settings, 1)
    assert second.version > first.version
    assert first.artifact_path != second.artifact_path


def test_load_model_roundtrip(settings: Settings) -> None:
    row = register_constant_model(settings, constant=1)
    ref = model_ref(row)
    assert ref.feature_order == ("x",) and ref.label_names == ("no", "yes")
    model = model_registry.load_model(ref)
    assert list(model.predict([[0.0], [5.0]])) == [1, 1]


def test_tampered_artifact_is_refused(settings: Settings) -> None:
    row = register_constant_model(settings)
    path = Path(row.artifact_path)
    path.write_bytes(path.read_bytes() + b"tampered")
    with pytest.raises(ModelIntegrityError, match=f"model version {row.version}"):
        model_registry.load_model(model_ref(row))


def test_wrong_recorded_hash_is_refused(settings: Settings) -> None:
    row = register_constant_model(settings)
    ref = model_ref(row)
    forged = type(ref)(ref.version, ref.artifact_path, "0" * 64, ref.feature_order, ref.label_names)
    with pytest.raises(ModelIntegrityError, match="Refusing to load"):
        model_registry.load_model(forged)


def test_no_champion_raises_helpful_lookup_error(settings: Settings) -> None:
    register_constant_model(settings)
    with pytest.raises(LookupError, match="no champion of model .iris.; run the retrain"):
        model_registry.get_version(settings)


def test_unknown_version_raises(settings: Settings) -> None:
    with pytest.raises(LookupError, match="no version 42"):
        model_registry.get_version(settings, 42)


def test_promote_makes_champion(settings: Settings) -> None:
    row = register_constant_model(settings)
    model_registry.promote(settings, row.version)
    champion = model_registry.get_version(settings)
    assert champion.version == row.version
    assert champion.stage == "champion"
    assert champion.promoted_at is not None


def test_promote_archives_previous_champion(settings: Settings) -> None:
    first, second, third = (register_constant_model(settings, i % 2) for i in range(3))
    model_registry.promote(settings, first.version)
    model_registry.promote(settings, second.version)
    assert model_registry.get_version(settings).version == second.version
    assert model_registry.get_version(settings, first.version).stage == "archived"
    assert model_registry.get_version(settings, third.version).stage == "candidate"
    model_registry.promote(settings, third.version)
    stages = [model_registry.get_version(settings, r.version).stage for r in (first, second, third)]
    assert stages == ["archived", "archived", "champion"]


def test_promote_unknown_version_keeps_champion(settings: Settings) -> None:
    row = register_constant_model(settings)
    model_registry.promote(settings, row.version)
    with pytest.raises(LookupError, match="the model registry has no version 99"):
        model_registry.promote(settings, 99)
    assert model_registry.get_version(settings).version == row.version


def test_each_model_has_its_own_versions_champion_and_rollback(settings: Settings) -> None:
    """Two models in one registry: promotion and rollback of one leave the other untouched."""
    wine = settings.model_copy(update={"model_name": "wine"})
    iris_1, iris_2 = register_constant_model(settings, 0), register_constant_model(settings, 1)
    wine_1 = register_constant_model(wine, 1)
    model_registry.promote(settings, iris_1.version)
    model_registry.promote(wine, wine_1.version)
    model_registry.promote(settings, iris_2.version)
    assert model_registry.get_version(settings).version == iris_2.version
    assert model_registry.get_version(wine).version == wine_1.version
    assert [v.version for v in model_registry.list_versions(wine)] == [wine_1.version]
    assert [v.model_name for v in model_registry.list_versions(settings)] == ["iris", "iris"]
    assert [d.version for d in model_registry.list_decisions(wine)] == [wine_1.version]
    assert model_registry.list_models(settings) == {"iris": iris_2.version, "wine": wine_1.version}
    assert model_registry.rollback(settings) == iris_1.version
    assert model_registry.get_version(wine).version == wine_1.version
    with pytest.raises(LookupError, match="no earlier champion"):
        model_registry.rollback(wine)  # iris's history is not wine's
    assert model_registry.get_version(settings, iris_1.version).dataset == "iris"


def test_another_models_version_is_refused_by_name(settings: Settings) -> None:
    wine = settings.model_copy(update={"model_name": "wine"})
    row = register_constant_model(wine)
    with pytest.raises(LookupError, match=f"version {row.version} belongs to model 'wine'"):
        model_registry.get_version(settings, row.version)
    with pytest.raises(LookupError, match="belongs to model 'wine', not 'iris'"):
        model_registry.promote(settings, row.version)
    with pytest.raises(LookupError, match="no champion of model 'iris'"):
        model_registry.get_version(settings)


def test_versions_from_before_model_names_join_the_first_model_that_opens_the_registry(
    tmp_path: Path,
) -> None:
    """A registry at revision 0004 (no model names) with a champion, upgraded: its versions and
    decisions become the current dataset's model's, and it keeps working."""
    from sqlalchemy import text

    from checkpoints.database import alembic_config, new_engine

    url = f"sqlite:///{tmp_path}/old.sqlite"
    engine = new_engine(url)
    with engine.begin() as connection:
        from alembic import command

        command.upgrade(alembic_config(connection=connection), "0004")
        connection.execute(
            text(
                "INSERT INTO model_versions (created_at, family, params, metrics, training_table,"
                " training_snapshot_id, training_rows, feature_order, label_names, artifact_path,"
                " sha256, stage) VALUES ('2026-01-01', 'dummy', '{}', '{}', 'ml.features', 1, 2,"
                " '[\"x\"]', '[\"no\", \"yes\"]', '/nowhere', '00', 'champion')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO model_promotions (at, action, version, reason) "
                "VALUES ('2026-01-01', 'promote', 1, 'old')"
            )
        )
    engine.dispose()
    wine = Settings(
        _env_file=None, local_dir=tmp_path, database_url=url, dataset="wine"
    )  # the first to open it after the upgrade
    assert model_registry.get_version(wine).version == 1
    assert [d.reason for d in model_registry.list_decisions(wine)] == ["old"]
    iris = wine.model_copy(update={"model_name": "iris"})
    assert model_registry.list_versions(iris) == []
    assert model_registry.list_models(iris) == {"wine": 1}
