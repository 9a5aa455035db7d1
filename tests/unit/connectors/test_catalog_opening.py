"""Opening the SQL catalog for the first time creates its tables; two openers at once (the
demo's datasets in threads, two flow processes) must both end up with the catalog."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pyiceberg.catalog.sql import SqlCatalog
from sqlalchemy.exc import OperationalError

from mlplatform.connectors import iceberg_tables
from mlplatform.connectors.iceberg_tables import ensure_tables
from mlplatform.settings import Settings


def _settings(folder: Path) -> Settings:
    return Settings(_env_file=None, local_dir=folder, database_url=f"sqlite:///{folder}/db.sqlite")


def test_two_datasets_open_a_new_catalog_at_once_from_threads(tmp_path: Path) -> None:
    for attempt in range(3):  # unguarded, one attempt in a few failed with "already exists"
        iris = _settings(tmp_path / str(attempt))
        with ThreadPoolExecutor(2) as pool:
            catalogs = list(pool.map(ensure_tables, [iris, iris.for_dataset("wine")]))
        assert catalogs[0] is catalogs[1]  # opened once
        assert {n[0] for n in catalogs[0].list_namespaces()} == {"ml", "ml_wine"}


def test_a_catalog_another_process_created_meanwhile_is_opened_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []

    def racing(name: str, **properties: str) -> SqlCatalog:
        opened.append(name)
        if len(opened) == 1:  # the other process created the tables after this one checked
            raise OperationalError(
                "CREATE TABLE", {}, Exception("table iceberg_tables already exists")
            )
        return SqlCatalog(name, **properties)

    monkeypatch.setattr(iceberg_tables, "SqlCatalog", racing)
    iceberg_tables._sql_catalog.cache_clear()
    try:
        assert ensure_tables(_settings(tmp_path)).list_namespaces() == [("ml",)]
    finally:
        iceberg_tables._sql_catalog.cache_clear()
    assert len(opened) == 2
