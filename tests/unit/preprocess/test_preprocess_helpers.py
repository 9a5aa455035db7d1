"""mlplatform.preprocess.batch helpers: JDBC catalog options, claiming landing files, the job's
counts and the run's report artifact."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlplatform.preprocess.batch import (
    PreprocessResult,
    claim_landing_files,
    jdbc_catalog_options,
    read_counts,
)
from mlplatform.settings import Settings
from tasks.artifacts import preprocess_markdown

pytestmark = pytest.mark.unit


def _settings(tmp_path: Path, **kwargs: object) -> Settings:
    return Settings(_env_file=None, local_dir=tmp_path, **kwargs)


def test_sqlite_catalog_uses_wal_and_busy_timeout(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    options = jdbc_catalog_options(s)
    db = tmp_path / "state" / "iceberg_catalog.db"
    assert options["uri"] == f"jdbc:sqlite:{db}?journal_mode=WAL&busy_timeout=60000"
    assert options["type"] == "iceberg"
    assert options["catalog-impl"] == "org.apache.iceberg.jdbc.JdbcCatalog"
    assert options["warehouse"] == f"file://{tmp_path}/warehouse"
    assert options["jdbc.schema-version"] == "V1"
    assert options["jdbc.init-catalog-tables"] == "false"  # PyIceberg made them
    assert "jdbc.user" not in options and "jdbc.password" not in options


def test_explicit_sqlite_catalog_url(tmp_path: Path) -> None:
    s = _settings(tmp_path, catalog_url=f"sqlite:///{tmp_path}/other.db", warehouse="s3://b/w")
    options = jdbc_catalog_options(s)
    assert options["uri"].startswith(f"jdbc:sqlite:{tmp_path}/other.db?")
    assert options["warehouse"] == "s3://b/w"


def test_postgresql_catalog_with_credentials(tmp_path: Path) -> None:
    s = _settings(tmp_path, catalog_url="postgresql+psycopg2://alice:s3cret@db.internal:6543/cat")
    options = jdbc_catalog_options(s)
    assert options["uri"] == "jdbc:postgresql://db.internal:6543/cat"
    assert options["jdbc.user"] == "alice"
    assert options["jdbc.password"] == "s3cret"


def test_postgresql_default_port_and_no_credentials(tmp_path: Path) -> None:
    s = _settings(tmp_path, catalog_url="postgresql://db.internal/cat")
    options = jdbc_catalog_options(s)
    assert options["uri"] == "jdbc:postgresql://db.internal:5432/cat"
    assert "jdbc.user" not in options and "jdbc.password" not in options


@pytest.mark.parametrize("url", ["mysql://u:p@h/db", "oracle://h/db"])
def test_other_backends_are_rejected(tmp_path: Path, url: str) -> None:
    with pytest.raises(ValueError, match="only sqlite and postgresql"):
        jdbc_catalog_options(_settings(tmp_path, catalog_url=url))


def test_claim_returns_none_when_landing_is_empty(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    s.resolved_landing_dir.mkdir(parents=True)
    (s.resolved_landing_dir / "notes.txt").write_text("not a csv")
    assert claim_landing_files(s, "run-1") is None
    assert not (s.resolved_landing_dir / "_inflight" / "run-1").exists()


def test_claim_returns_none_when_landing_is_missing(tmp_path: Path) -> None:
    assert claim_landing_files(_settings(tmp_path), "run-1") is None


def test_claim_moves_csv_files_into_inflight(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    landing = s.resolved_landing_dir
    landing.mkdir(parents=True)
    (landing / "a.csv").write_text("A")
    (landing / "b.csv").write_text("B")
    (landing / "c.tmp").write_text("half written")
    claimed = claim_landing_files(s, "run-1")
    assert claimed == landing / "_inflight" / "run-1"
    assert sorted(p.name for p in claimed.iterdir()) == ["a.csv", "b.csv"]
    assert (claimed / "a.csv").read_text() == "A"
    assert sorted(p.name for p in landing.glob("*.csv")) == []
    assert (landing / "c.tmp").exists()


def test_claim_picks_up_leftovers_of_a_crashed_run(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    crashed = s.resolved_landing_dir / "_inflight" / "crashed-run"
    crashed.mkdir(parents=True)
    (crashed / "old.csv").write_text("OLD")
    claimed = claim_landing_files(s, "run-2")
    assert claimed == s.resolved_landing_dir / "_inflight" / "run-2"
    assert (claimed / "recovered-crashed-run" / "old.csv").read_text() == "OLD"
    assert not crashed.exists()
    # A new file and two crashed runs with the same file name: nothing is overwritten.
    (s.resolved_landing_dir / "new.csv").write_text("NEW")
    for name in ("crash-a", "crash-b"):
        folder = s.resolved_landing_dir / "_inflight" / name
        folder.mkdir(parents=True)
        (folder / "raw.csv").write_text(name)
    claimed = claim_landing_files(s, "run-2")
    assert (claimed / "new.csv").read_text() == "NEW"
    assert (claimed / "recovered-crash-a" / "raw.csv").read_text() == "crash-a"
    assert (claimed / "recovered-crash-b" / "raw.csv").read_text() == "crash-b"
    # Once the run finishes (preprocess moves its folder to _processed), no work is left.
    claimed.rename(tmp_path / "processed-run-2")
    assert claim_landing_files(s, "run-3") is None


def test_claim_retried_with_same_run_id_keeps_its_files(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    landing = s.resolved_landing_dir
    landing.mkdir(parents=True)
    (landing / "a.csv").write_text("A")
    first = claim_landing_files(s, "run-1")
    again = claim_landing_files(s, "run-1")
    assert again == first
    assert [p.name for p in again.iterdir()] == ["a.csv"]


def test_read_counts_sums_every_part_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "part-a-0").write_text(
        '{"outcome":"written","rows":5}\n{"outcome":"not_utf8","rows":1}\n'
    )
    (tmp_path / "sub" / "part-b-0").write_text('{"outcome":"written","rows":2}\n\n')
    (tmp_path / ".part-c.inprogress").write_text('{"outcome":"written","rows":100}\n')
    (tmp_path / "_SUCCESS").write_text("")
    assert read_counts(tmp_path) == {"written": 7, "not_utf8": 1}
    assert read_counts(tmp_path / "missing") == {}


def _result(**kwargs: object) -> PreprocessResult:
    figures = {"files": 2, "features_rows": 90, "quarantined_rows": 7, "job_id": "abc123"}
    return PreprocessResult(**{"features_snapshot_id": 42, **figures, **kwargs})


def test_report_shows_counts_and_reasons_table() -> None:
    result = _result(
        rows_read=100,
        already_ingested=3,
        quarantined_by_reason={"duplicate_key": 2, "not_utf8": 5},
    )
    markdown = preprocess_markdown(result)
    for row in (
        "| files | 2 |",
        "| rows read | 100 |",
        "| rows written (Iceberg features + Pulsar topic) | 90 |",
        "| already ingested (skipped) | 3 |",
        "| rows quarantined | 7 |",
        "| features snapshot | 42 |",
        "| Flink job | abc123 |",
        "| reason | rows |",
        "| duplicate_key | 2 |",
        "| not_utf8 | 5 |",
    ):
        assert row in markdown, row
    assert "Flink UI" not in markdown  # local mode: no web UI to link


def test_report_links_the_session_clusters_ui() -> None:
    url = "http://127.0.0.1:8081/#/job/abc123"
    markdown = preprocess_markdown(_result(quarantined_rows=0, flink_job_url=url))
    assert f"| Flink job | [abc123]({url}) |" in markdown
    assert f"| Flink UI | [{url}]({url}) |" in markdown
    assert "No row was quarantined." in markdown
