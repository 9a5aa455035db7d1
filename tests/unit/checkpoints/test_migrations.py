"""The Alembic revisions in checkpoints/migrations on temporary SQLite databases."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Connection, Engine, event, inspect, text

import checkpoints.registry_tables  # noqa: F401
import checkpoints.store  # noqa: F401  (registers its tables on Base)
from checkpoints import database
from checkpoints.database import (
    Base,
    alembic_config,
    current_revision,
    get_engine,
    head_revision,
    new_engine,
    upgrade,
)
from checkpoints.schema import schema_differences
from checkpoints.store import CheckpointStore
from tests.concurrent_openers import open_in_processes

pytestmark = pytest.mark.unit


@pytest.fixture
def url(tmp_path: Path) -> str:
    # get_engine is cached per URL: every test gets its own database file.
    return f"sqlite:///{tmp_path}/platform.db"


def revision_of(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return current_revision(connection)


def make_create_all_era_database(url: str) -> None:
    """What create_all made before migrations: revision 0001's tables with rows, no version."""
    command.upgrade(alembic_config(url=url), "0001")
    engine = new_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO checkpoint_runs (run_id, kind, dataset, snapshot_id, model_version,"
                " mode, status, rows_total, started_at) VALUES ('old-run', 'batch-inference',"
                " 'ml.features', 11, 2, 'fused', 'succeeded', 100, '2026-01-01 00:00:00.000000')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO checkpoint_units (run_id, unit, status, rows_in, rows_out, attempts,"
                " committed_snapshot_id, updated_at) VALUES ('old-run', 0, 'done', 100, 100, 1, 12,"
                " '2026-01-01 00:00:00.000000')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO model_versions (created_at, family, params, metrics, training_table,"
                " training_snapshot_id, training_rows, feature_order, label_names, artifact_path,"
                " sha256, stage) VALUES ('2026-01-01 00:00:00.000000', 'dummy', '{}', '{}',"
                " 'ml.features', 11, 2, '[\"x\"]', '[\"no\", \"yes\"]', '/m/1.skops', 'ab',"
                " 'champion')"
            )
        )
        connection.execute(text("DROP TABLE alembic_version"))
    engine.dispose()


def test_migrations_make_the_models_schema(url: str) -> None:
    engine = get_engine(url)
    assert revision_of(engine) == head_revision()
    assert schema_differences(engine) == []
    tables = set(inspect(engine).get_table_names())
    assert tables == set(Base.metadata.tables) | {"alembic_version"}


def test_revision_0001_is_what_create_all_made_then(url: str) -> None:
    make_create_all_era_database(url)
    tables = set(inspect(new_engine(url)).get_table_names())
    assert tables == {"checkpoint_runs", "checkpoint_units", "model_versions", "model_promotions"}


def test_create_all_era_database_is_stamped_and_upgraded_keeping_rows(url: str) -> None:
    make_create_all_era_database(url)
    engine = get_engine(url)
    assert revision_of(engine) == head_revision()
    assert schema_differences(engine) == []
    run = CheckpointStore(url).get_run("old-run")
    assert (run.status, run.rows_total, run.units_total, run.job_key) == ("succeeded", 100, 0, None)
    with engine.connect() as connection:
        unit = connection.execute(text("SELECT * FROM checkpoint_units")).mappings().one()
        versions = connection.execute(text("SELECT version, stage FROM model_versions")).all()
    assert (unit["rows_out"], unit["committed_snapshot_id"], unit["row_groups"]) == (100, 12, 0)
    assert unit["file_path"] is None
    assert [tuple(v) for v in versions] == [(1, "champion")]


def test_database_create_all_made_last_is_stamped_0002_and_upgraded(url: str) -> None:
    # create_all's last schema (9db3dd7 until migrations came) was 0002's, without a version.
    command.upgrade(alembic_config(url=url), "0002")
    with new_engine(url).begin() as connection:
        connection.execute(text("DROP TABLE alembic_version"))
    engine = get_engine(url)
    assert revision_of(engine) == head_revision()
    assert schema_differences(engine) == []


def test_downgrade_to_0001_and_upgrade_again(url: str) -> None:
    store = CheckpointStore(url)
    store.start_run(
        "r1",
        kind="batch-inference",
        dataset="ml.features",
        snapshot_id=1,
        model_version=1,
        mode="fused",
        job_key="k1",
        units_total=3,
    )
    config = alembic_config(url=url)
    command.downgrade(config, "0001")
    engine = new_engine(url)
    assert revision_of(engine) == "0001"
    assert "checkpoint_jobs" not in inspect(engine).get_table_names()
    assert "job_key" not in {c["name"] for c in inspect(engine).get_columns("checkpoint_runs")}
    command.upgrade(config, "head")
    assert revision_of(engine) == head_revision()
    assert schema_differences(engine) == []
    assert store.get_run("r1").units_total == 0  # the column came back with its default


def test_database_at_head_costs_a_revision_check_only(url: str) -> None:
    get_engine(url)
    engine = new_engine(url)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    assert upgrade(engine) == head_revision()
    assert 1 <= len(statements) <= 3
    assert all(s.lstrip().upper().startswith(("SELECT", "PRAGMA")) for s in statements)


def test_in_memory_database_is_migrated_too() -> None:
    engine = get_engine("sqlite://")
    assert revision_of(engine) == head_revision()
    assert schema_differences(engine) == []


def test_database_newer_than_this_platform_is_refused(url: str) -> None:
    get_engine(url)
    engine = new_engine(url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(RuntimeError, match="revision '9999'.*run a newer version"):
        upgrade(engine)


def test_concurrent_first_openings_in_threads(url: str) -> None:
    barrier, errors = threading.Barrier(4), []

    def open_database() -> None:
        engine = new_engine(url)
        barrier.wait()
        try:
            upgrade(engine)
        except Exception as error:  # collected: an exception in a thread would be lost
            errors.append(error)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=open_database) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert revision_of(new_engine(url)) == head_revision()


def test_concurrent_first_openings_in_processes(url: str) -> None:
    assert open_in_processes(url) == [0, 0, 0]
    engine = new_engine(url)
    assert revision_of(engine) == head_revision()
    assert schema_differences(engine) == []


def test_without_a_lock_the_losers_of_the_race_retry(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on a dialect with no lock: a loser's DDL fails, it re-checks the revision and retries."""

    @contextmanager
    def unlocked(engine: Engine) -> Iterator[Connection]:
        with engine.begin() as connection:
            yield connection

    monkeypatch.setattr(database, "_migration_transaction", unlocked)
    assert open_in_processes(url) == [0, 0, 0]
    engine = new_engine(url)
    assert revision_of(engine) == head_revision()
    assert schema_differences(engine) == []
