"""The pipeline's stages on the real services, on tables and topics of the module's own:
Flink preprocessing (which also takes over a crashed run's files) -> training -> Ray Data batch
inference (with a resume) -> Ray stream actors, and the operator CLI. Each stage is a module
fixture that the tests of it and of later stages ask for, so the tests pass in any order.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from pyiceberg.expressions import EqualTo
from typer.testing import CliRunner

from mlplatform.connectors.iceberg_tables import load_table
from mlplatform.connectors.pulsar_io import read_all, topic_stats
from mlplatform.inference.batch.runner import run_batch_inference
from mlplatform.inference.stream.runner import run_stream_inference
from mlplatform.ops.cli import app
from mlplatform.preprocess.batch import preprocess
from mlplatform.sample_data.demo_rows import MALFORMED_KINDS, write_demo_raw
from mlplatform.settings import Settings
from mlplatform.training.retrain import retrain
from tests.helpers import module_settings, settings_env, settings_in_process

pytestmark = pytest.mark.integration

ROWS, MALFORMED, CRASHED = 400, 21, 30


def _keys(path) -> list[str]:
    return [line.split(",")[0] for line in path.read_text().splitlines()[1:]]


@pytest.fixture(scope="module")
def isolated(isolated: Settings) -> Settings:
    """This module's own namespace, topics, landing folder and database."""
    return module_settings(isolated, "stages")


@pytest.fixture(scope="module")
def preprocessed(isolated: Settings) -> dict:
    """One Flink run over a new file and the files a crashed run left in flight."""
    crashed = write_demo_raw(isolated, CRASHED, 0, seed=12)
    keys = _keys(crashed.path)
    inflight = isolated.resolved_landing_dir / "_inflight" / "crashed-run"
    inflight.mkdir(parents=True)
    crashed.path.rename(inflight / crashed.path.name)
    batch = write_demo_raw(isolated, ROWS, MALFORMED, seed=11)
    keys += _keys(batch.path)
    result = preprocess(isolated, run_id="it-preprocess")
    return {"result": result, "keys": keys, "inflight": inflight}


def test_flink_writes_both_sinks_and_pyiceberg_reads_them(
    isolated: Settings, preprocessed: dict
) -> None:
    result = preprocessed["result"]
    assert (result.features_rows, result.quarantined_rows) == (ROWS + CRASHED, MALFORMED)
    features = load_table(isolated, isolated.features_table).scan().to_pandas()
    valid_keys = {k for k in preprocessed["keys"] if k and "-bad-" not in k}
    assert len(valid_keys) == ROWS + CRASHED
    assert set(features[isolated.key_column]) == valid_keys
    assert features[isolated.feature_columns].notna().all().all()
    messages = [json.loads(m.data()) for m in read_all(isolated, isolated.features_topic)]
    assert sorted(m[isolated.key_column] for m in messages) == sorted(valid_keys)


def test_every_malformed_row_is_quarantined_with_its_reason(
    isolated: Settings, preprocessed: dict
) -> None:
    quarantine = load_table(isolated, isolated.quarantine_table).scan().to_pandas()
    expected = Counter(MALFORMED_KINDS[i % len(MALFORMED_KINDS)][0] for i in range(MALFORMED))
    assert Counter(quarantine["reason"]) == expected
    assert quarantine["source"].str.endswith(".csv").all()


def test_a_crashed_runs_files_are_processed_by_the_next_run(preprocessed: dict) -> None:
    # Its rows are among the features checked above; its in-flight folder is gone.
    assert not preprocessed["inflight"].exists()


@pytest.fixture(scope="module")
def trained(isolated: Settings, preprocessed: dict):
    return retrain(isolated)


def test_training_registers_and_promotes_the_first_model(trained) -> None:
    assert (trained.decision, trained.reason) == ("promote", "no champion yet")
    assert len(trained.candidates) == 5
    assert trained.best_metrics["accuracy"] > 0.8  # noisy Iris is easy; a broken pipeline is not


@pytest.fixture(scope="module")
def resumed(isolated: Settings, trained):
    """A batch run crashed after its first commit, then resumed."""

    class Crash(Exception):
        pass

    def crash_after_the_first_commit(units_done: int, units_total: int) -> None:
        raise Crash

    with pytest.raises(Crash):
        run_batch_inference(isolated, on_progress=crash_after_the_first_commit)
    return run_batch_inference(isolated)


def test_batch_inference_resumes_without_doubling(isolated: Settings, trained, resumed) -> None:
    assert resumed.resumed and resumed.skipped_rows > 0  # the committed unit is not redone
    assert resumed.skipped_rows + resumed.predicted_rows == resumed.input_rows
    table = load_table(isolated, isolated.predictions_table)
    rows = table.scan(row_filter=EqualTo("run_id", resumed.run_id)).to_pandas()
    features = load_table(isolated, isolated.features_table).scan().to_pandas()
    assert len(rows) == len(features) == resumed.input_rows
    assert rows[isolated.key_column].is_unique
    assert set(rows[isolated.key_column]) == set(features[isolated.key_column])
    assert rows["model_version"].eq(trained.best_version).all()


def test_stream_actors_predict_every_message_once(isolated: Settings, trained) -> None:
    sent = len(read_all(isolated, isolated.features_topic))
    result = run_stream_inference(isolated, max_messages=sent, timeout_s=120)
    assert (result.published, result.failed) == (sent, 0)
    out = [json.loads(m.data()) for m in read_all(isolated, isolated.predictions_topic)]
    keys = [m[isolated.key_column] for m in out]
    assert len(keys) == len(set(keys)) == sent
    assert {m["label"] for m in out} <= set(isolated.label_names)
    assert all(m["label"] == isolated.label_names[m["class_index"]] for m in out)
    backlog = topic_stats(isolated, isolated.features_topic)["backlog"]
    assert backlog[isolated.stream_subscription] == 0, "an input was not acknowledged"


def test_operator_cli_on_the_real_services(
    isolated: Settings, resumed, monkeypatch: pytest.MonkeyPatch
) -> None:
    with settings_in_process(monkeypatch, settings_env(isolated)):
        runner = CliRunner()
        status = runner.invoke(app, ["status", "--json"])
        assert status.exit_code == 0, status.output
        report = json.loads(status.output)
        assert len(report["services"]) == 4
        assert all(" healthy " in line for line in report["services"])
        [features] = [t for t in report["topics"] if t["topic"] == isolated.features_topic]
        assert features["exists"] and features["messages_in"] >= ROWS
        assert report["ray"]["nodes"] >= 1 and report["ray"]["cpus"] > 0
        runs = json.loads(runner.invoke(app, ["runs", "list", "--json"]).output)
        assert runs and runs[0]["status"] == "succeeded"
        assert runs[0]["rows_done"] == runs[0]["rows_total"] > 0
        quarantined = json.loads(runner.invoke(app, ["quarantine", "--json"]).output)
        expected = Counter(MALFORMED_KINDS[i % len(MALFORMED_KINDS)][0] for i in range(MALFORMED))
        assert quarantined["by_reason"] == dict(expected)
        assert runner.invoke(app, ["runs", "resume", "no-such-run"]).exit_code == 1
