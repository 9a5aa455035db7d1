"""The `mlp models` command line on a temporary registry (typer's CliRunner, no services)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sklearn.dummy import DummyClassifier
from typer.testing import CliRunner

from mlplatform.ops.cli import app
from mlplatform.registry import model_registry
from mlplatform.settings import Settings, get_settings

pytestmark = pytest.mark.unit


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The CLI reads get_settings(): point it at this test's own database and folder."""
    url = f"sqlite:///{tmp_path}/db.sqlite"  # get_engine is cached per URL: one per test
    monkeypatch.setenv("MLP_DATABASE_URL", url)
    monkeypatch.setenv("MLP_LOCAL_DIR", str(tmp_path))
    get_settings.cache_clear()
    s = get_settings()
    assert s.resolved_database_url == url and s.local_dir == tmp_path
    yield s
    get_settings.cache_clear()


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _register(s: Settings, accuracy: float = 0.5) -> int:
    model = DummyClassifier(strategy="constant", constant=1).fit([[0.0], [1.0]], [0, 1])
    row = model_registry.register(
        s,
        model,
        family="dummy",
        params={"strategy": "constant"},
        metrics={"accuracy": accuracy, "macro_f1": accuracy / 2},
        training_table="ml.features",
        training_snapshot_id=77,
        training_rows=2,
        feature_order=["x"],
        label_names=["no", "yes"],
    )
    return row.version


def _champion(s: Settings) -> int:
    return model_registry.get_version(s).version


def test_models_list_json(settings: Settings, runner: CliRunner) -> None:
    v1, v2 = _register(settings, 0.5), _register(settings, 0.75)
    model_registry.promote(settings, v1)
    result = runner.invoke(app, ["models", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["version"], r["stage"]) for r in rows] == [(v1, "champion"), (v2, "candidate")]
    assert rows[1]["family"] == "dummy"
    assert rows[1]["params"] == {"strategy": "constant"}
    assert (rows[1]["accuracy"], rows[1]["macro_f1"]) == (0.75, 0.375)
    assert rows[1]["snapshot"] == 77
    assert rows[1]["sha256"] == model_registry.get_version(settings, v2).sha256[:12]


def test_models_list_json_of_empty_registry(settings: Settings, runner: CliRunner) -> None:
    result = runner.invoke(app, ["models", "list", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []


def test_models_list_text(settings: Settings, runner: CliRunner) -> None:
    v1, v2 = _register(settings, 0.5), _register(settings, 0.75)
    model_registry.promote(settings, v2)
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"v{v1}") and "candidate" in lines[0] and "acc=0.5000" in lines[0]
    assert lines[1].startswith(f"v{v2}") and "champion" in lines[1] and "acc=0.7500" in lines[1]
    assert "snapshot=77" in lines[1]


def test_models_promote(settings: Settings, runner: CliRunner) -> None:
    v1, v2 = _register(settings), _register(settings)
    model_registry.promote(settings, v1)
    result = runner.invoke(app, ["models", "promote", str(v2)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"champion is now version {v2}"
    assert _champion(settings) == v2
    assert model_registry.get_version(settings, v1).stage == "archived"
    last = model_registry.list_decisions(settings)[-1]
    assert (last.action, last.version, last.previous_champion) == ("promote", v2, v1)
    assert last.reason == "promoted by hand"


def test_models_promote_unknown_version_fails(settings: Settings, runner: CliRunner) -> None:
    v1 = _register(settings)
    model_registry.promote(settings, v1)
    result = runner.invoke(app, ["models", "promote", "999"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error:")
    assert "999" in result.stderr
    assert result.stdout == ""
    assert _champion(settings) == v1


def test_models_promote_bad_usage_exits_2(settings: Settings, runner: CliRunner) -> None:
    result = runner.invoke(app, ["models", "promote", "latest"])
    assert result.exit_code == 2
    assert model_registry.list_decisions(settings) == []


def test_models_rollback_restores_previous_champion(settings: Settings, runner: CliRunner) -> None:
    v1, v2 = _register(settings), _register(settings)
    model_registry.promote(settings, v1)
    model_registry.promote(settings, v2)
    result = runner.invoke(app, ["models", "rollback"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"champion is now version {v1}"
    assert _champion(settings) == v1
    last = model_registry.list_decisions(settings)[-1]
    assert (last.action, last.version, last.previous_champion) == ("rollback", v1, v2)


def test_models_rollback_to_named_version(settings: Settings, runner: CliRunner) -> None:
    v1, v2, v3 = _register(settings), _register(settings), _register(settings)
    for version in (v1, v2, v3):
        model_registry.promote(settings, version)
    result = runner.invoke(app, ["models", "rollback", str(v1)])
    assert result.exit_code == 0, result.output
    assert _champion(settings) == v1


def test_models_rollback_with_nothing_to_roll_back(settings: Settings, runner: CliRunner) -> None:
    v1 = _register(settings)
    model_registry.promote(settings, v1)
    result = runner.invoke(app, ["models", "rollback"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error:")
    assert "no earlier champion" in result.stderr
    assert _champion(settings) == v1


def test_models_rollback_on_empty_registry(settings: Settings, runner: CliRunner) -> None:
    result = runner.invoke(app, ["models", "rollback"])
    assert result.exit_code == 1
    assert "no earlier champion" in result.stderr


def test_models_by_name_with_the_model_option(settings: Settings, runner: CliRunner) -> None:
    """--model picks the registry's model; without it, the dataset's (iris) is meant."""
    wine = settings.for_model("wine")
    iris_1, wine_1, wine_2 = _register(settings), _register(wine), _register(wine)
    model_registry.promote(settings, iris_1)
    model_registry.promote(wine, wine_1)
    result = runner.invoke(app, ["models", "promote", str(wine_2), "--model", "wine"])
    assert result.exit_code == 0, result.output
    assert (_champion(wine), _champion(settings)) == (wine_2, iris_1)
    listed = runner.invoke(app, ["models", "list", "--json", "--model", "wine"])
    assert [r["version"] for r in json.loads(listed.stdout)] == [wine_1, wine_2]
    names = runner.invoke(app, ["models", "names", "--json"])
    assert json.loads(names.stdout) == {"iris": iris_1, "wine": wine_2}
    refused = runner.invoke(app, ["models", "promote", str(wine_1)])  # iris's, by default
    assert refused.exit_code == 1
    assert "belongs to model 'wine', not 'iris'" in refused.stderr
    assert runner.invoke(app, ["models", "rollback", "--model", "wine"]).exit_code == 0
    assert (_champion(wine), _champion(settings)) == (wine_1, iris_1)
    assert runner.invoke(app, ["models", "list", "--model", "no such!"]).exit_code != 0


def test_models_register_imports_a_skops_file_or_says_why_not(
    settings: Settings, runner: CliRunner, tmp_path: Path
) -> None:
    """A classifier trained elsewhere, on a features table of this test's own (no services)."""
    import skops.io
    from sklearn.linear_model import LogisticRegression

    from mlplatform.connectors.iceberg_tables import ensure_tables
    from mlplatform.sample_data.synthetic_features import feature_rows

    rows = feature_rows(settings, 120, seed=2)
    ensure_tables(settings).load_table(settings.table_id(settings.features_table)).append(rows)
    frame = rows.to_pandas()
    good = LogisticRegression(max_iter=500).fit(
        frame[settings.feature_columns].to_numpy(), frame[settings.label_column]
    )
    skops.io.dump(good, tmp_path / "good.skops")
    result = runner.invoke(app, ["models", "register", str(tmp_path / "good.skops")])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("v") and "promote: no champion yet" in result.stdout
    assert model_registry.get_version(settings).family == "external"
    narrow = LogisticRegression().fit(
        frame[settings.feature_columns[:2]].to_numpy(), frame["label"]
    )
    skops.io.dump(narrow, tmp_path / "narrow.skops")
    refused = runner.invoke(app, ["models", "register", str(tmp_path / "narrow.skops")])
    assert refused.exit_code == 1 and refused.stdout == ""
    assert refused.stderr.startswith("error: the model takes 2 features")
    missing = runner.invoke(app, ["models", "register", str(tmp_path / "absent.skops")])
    assert missing.exit_code == 1 and "absent.skops" in missing.stderr


def test_runs_list_shows_checkpoint_progress(settings: Settings, runner: CliRunner) -> None:
    from checkpoints.store import CheckpointStore, UnitPlan

    store = CheckpointStore(settings.resolved_database_url)
    plan = [UnitPlan(0, "a", 0, 1, 200), UnitPlan(1, "a", 1, 1, 100), UnitPlan(2, "b", 0, 1, 200)]
    run, _ = store.open_run(
        "job",
        None,
        lambda: plan,
        kind="batch-inference",
        dataset="ml.features",
        snapshot_id=42,
        model_version=3,
        mode="fused",
    )
    store.mark_done(run.run_id, {0: 200, 1: 100}, snapshot_id=7)
    store.mark_attempt_failed(run.run_id, {2: "boom"}, max_attempts=1)
    result = runner.invoke(app, ["runs", "list"])
    assert result.exit_code == 0, result.output
    assert run.run_id in result.output and "rows 300/500 units 2/3 failed 1" in result.output
    [row] = json.loads(runner.invoke(app, ["runs", "list", "--json"]).output)
    assert (row["rows_done"], row["units_done"], row["units_failed"], row["status"]) == (
        300,
        2,
        1,
        "running",
    )


def test_resuming_an_unknown_run_fails_with_its_id(settings: Settings, runner: CliRunner) -> None:
    result = runner.invoke(app, ["runs", "resume", "no-such-run"])
    assert result.exit_code == 1
    assert "no checkpointed run with id 'no-such-run'" in result.output


def test_run_rejects_unknown_flows_and_bad_params(settings: Settings, runner: CliRunner) -> None:
    from mlplatform.ops.cli import _parse_params

    assert runner.invoke(app, ["run", "nonsense"]).exit_code == 2
    assert _parse_params(["max_messages=500", "timeout_s=null", "name=abc"]) == {
        "max_messages": 500,
        "timeout_s": None,
        "name": "abc",
    }
    result = runner.invoke(app, ["run", "retrain", "--param", "novalue"])
    assert result.exit_code == 2 and "is not key=value" in result.output


def test_db_current_and_upgrade(settings: Settings, runner: CliRunner) -> None:
    from checkpoints.database import head_revision

    head = head_revision()
    result = runner.invoke(app, ["db", "current"])
    assert result.exit_code == 1 and f"none (head is {head}; run `mlp db upgrade`)" in result.output
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0 and f"none -> {head}" in result.output
    assert f"at {head} already" in runner.invoke(app, ["db", "upgrade"]).output
    result = runner.invoke(app, ["db", "current"])
    assert result.exit_code == 0 and f"{head} (head)" in result.output


def test_db_on_an_unreachable_database_exits_1(
    settings: Settings, runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLP_DATABASE_URL", "postgresql+psycopg2://mlp:secret@127.0.0.1:1/platform")
    get_settings.cache_clear()
    for command in ("current", "upgrade"):
        result = runner.invoke(app, ["db", command])
        assert result.exit_code == 1 and "error:" in result.output, result.output
        assert "secret" not in result.output


def test_quarantine_cuts_raw_rows_and_json_keeps_them_whole(
    settings: Settings, runner: CliRunner
) -> None:
    from datetime import datetime

    import pyarrow as pa

    from mlplatform.connectors.iceberg_tables import ensure_tables, load_table

    ensure_tables(settings)
    table = load_table(settings, settings.quarantine_table)
    huge = "9," * 8000
    table.append(
        pa.table(
            {
                "raw": [huge, "a,b"],
                "reason": ["oversized", "wrong_field_count"],
                "source": ["landing/x.csv", "landing/x.csv"],
                "quarantined_at": [datetime(2026, 1, 1), datetime(2026, 1, 2)],
            }
        ).cast(table.schema().as_arrow())
    )
    text = runner.invoke(app, ["quarantine", "--width", "60"])
    assert text.exit_code == 0, text.output
    assert len(text.output) < 1000
    assert "... (16000 characters; --json shows all)" in text.output
    assert "'a,b'" in text.output  # a short row is shown whole
    whole = runner.invoke(app, ["quarantine", "--json"])
    assert whole.exit_code == 0, whole.output
    assert huge in [row["raw"] for row in json.loads(whole.output)["newest"]]
