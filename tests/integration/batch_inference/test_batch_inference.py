"""Batch inference's exactly-once promise on real Ray, real Iceberg and the SQL checkpoint store:
kill -9 of the flow process at seeded random points (of an incremental run, continued by the
next one, then two appends), a killed Ray worker, a poisoned unit, fused against separated mode,
a concurrent second run, and concurrent commits of one unit.

The features are written straight to Iceberg (mlplatform.sample_data.synthetic_features) in many
small row groups, so that a run has many units; the Flink path into that table is tested elsewhere.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from checkpoints.store import CheckpointStore, RunInProgress
from mlplatform.connectors.iceberg_tables import load_table
from mlplatform.inference.batch.job import job_key
from mlplatform.inference.batch.request import BatchRequest
from mlplatform.inference.batch.results import BatchInferenceFailed
from mlplatform.inference.batch.runner import run_batch_inference
from mlplatform.maintenance.tables import maintain
from mlplatform.sample_data.synthetic_features import append_features, feature_rows
from mlplatform.settings import PROJECT_DIR, Settings
from mlplatform.training.retrain import retrain
from tests.helpers import module_settings, own_actor_pids, pool_pids, settings_env
from tests.integration.batch_inference.exactly_once import (
    assert_exactly_once,
    predictions_of,
    race_commits,
    race_open_run,
)

pytestmark = pytest.mark.integration

ROWS, ROW_GROUP = 9000, 300  # 30 units of one row group each


@pytest.fixture(scope="module")
def batch(isolated: Settings) -> Settings:
    s = module_settings(
        isolated,
        "batch",
        unit_rows=ROW_GROUP,
        commit_every_rows=2 * ROW_GROUP,
        commit_every_s=0.5,
        actor_pool_min=1,
        actor_pool_max=1,
        batch_size=ROW_GROUP,
    )
    append_features(s, ROWS, seed=3, row_group_rows=ROW_GROUP)
    assert retrain(s, on_ray=False).decision == "promote"
    return s


def _fresh(batch: Settings, name: str, rows: int, row_group: int = ROW_GROUP, **kw) -> Settings:
    """Tables, database and champion of one test's own, from `rows` synthetic rows."""
    s = module_settings(batch, name, **kw)
    append_features(s, rows, seed=len(name), row_group_rows=row_group)
    assert retrain(s, on_ray=False).decision == "promote"
    return s


def _env(s: Settings) -> dict[str, str]:
    extra = ("unit_rows", "commit_every_s", "actor_pool_min", "actor_pool_max", "batch_size")
    return {
        **os.environ,
        **settings_env(s),
        **{f"MLP_{name.upper()}": str(getattr(s, name)) for name in extra},
    }


def _current_run_id(s: Settings) -> str | None:
    runs = CheckpointStore(s.resolved_database_url).list_runs(1)
    return runs[0].run_id if runs else None


def test_kill_minus_nine_of_the_flow_process_at_random_points_then_resume(batch: Settings) -> None:
    """An incremental run (the first of its lineage: every row) killed twice at random points;
    the next incremental run continues it rather than opening a second range. Two more appends
    with an incremental run after each, and table maintenance between them (compacting the
    files already predicted): across the runs each row has exactly one prediction, and a run
    with nothing new has no units."""
    s = batch
    store = CheckpointStore(s.resolved_database_url)
    rng = random.Random(20261122)
    code = "from flows.batch_inference import batch_inference as f; f(incremental=True)"
    flow = [sys.executable, "-c", code]
    run_id = None
    kills = []
    log = s.local_dir / "killed-flow.log"
    # Two kills: the second lands in a resumed run, a third added no state (~25 s each).
    for fraction in sorted(rng.uniform(0.1, 0.6) for _ in range(2)):
        with log.open("w") as output:
            process = subprocess.Popen(
                flow, cwd=PROJECT_DIR, env=_env(s), stdout=output, stderr=subprocess.STDOUT
            )
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and process.poll() is None:
                run_id = run_id or _current_run_id(s)
                if run_id and store.progress(run_id)[1] >= fraction * ROWS:
                    time.sleep(rng.uniform(0.0, 0.2))  # land between any two steps
                    break
                time.sleep(0.05)
            ended = process.poll()
            assert ended is None, (
                f"the flow process ended ({ended}) before {fraction:.0%}: {log.read_text()[-3000:]}"
            )
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(30)
        kills.append(store.progress(run_id)[1])
    assert kills == sorted(kills) and kills[-1] < ROWS, kills
    incremental = BatchRequest(incremental=True)
    result = run_batch_inference(s, incremental)
    assert result.resumed and result.run_id == run_id and result.since_snapshot_id is None
    assert result.skipped_rows >= kills[-1]
    assert result.skipped_rows + result.predicted_rows == ROWS
    assert_exactly_once(s, run_id)
    assert store.get_run(run_id).status == "succeeded"
    assert {u.status for u in store.units(run_id)} == {"done"}

    runs = [result]
    for rows, seed in ((600, 7), (300, 8)):
        if len(runs) == 2:  # table maintenance: the two files, both predicted, become one
            two_files = s.model_copy(update={"compaction_min_files": 2})
            features, _ = maintain(two_files, [s.features_table, s.predictions_table])
            assert (features.files_before, features.files_after) == (2, 1), features
        appended = append_features(s, rows, seed=seed, row_group_rows=ROW_GROUP)
        runs.append(run_batch_inference(s, incremental))
        covered = (runs[-1].since_snapshot_id, runs[-1].snapshot_id, runs[-1].predicted_rows)
        assert covered == (runs[-2].snapshot_id, appended, rows), runs[-1].basis
    assert "1 compaction(s) since" in runs[-1].basis, runs[-1].basis
    idle = run_batch_inference(s, incremental)
    assert (idle.since_snapshot_id, idle.units_total, idle.predicted_rows) == (appended, 0, 0)
    keys = [k for run in runs for k in predictions_of(s, run.run_id)[s.key_column]]
    everything = load_table(s, s.features_table).scan().to_arrow()[s.key_column].to_pylist()
    assert sorted(keys) == sorted(everything)  # each row once across the runs


def test_a_killed_ray_worker_loses_and_doubles_nothing(batch: Settings) -> None:
    s = _fresh(batch, "worker", 3000, commit_every_s=0.2)
    outcome: dict[str, object] = {}
    runner = threading.Thread(target=lambda: outcome.update(result=_run(s)))
    runner.start()
    store = CheckpointStore(s.resolved_database_url)
    killed: list[int] = []
    stage: list[int] = []
    pool: list[int] = []
    deadline = time.monotonic() + 180
    while not killed and time.monotonic() < deadline and runner.is_alive():
        # The actors are looked up as soon as they exist (Ray's state API takes a while), and
        # killed once three units are done: never after the run's last unit. One unit-stage
        # actor (Ray Data's) and one actor of the model's warm pool.
        stage = stage or own_actor_pids(s, "UnitStage")
        pool = pool or sorted(pool_pids(s).values())
        run_id = _current_run_id(s)
        if stage and pool and run_id and store.progress(run_id)[0] >= 3:
            killed = [stage[0], pool[0]]
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    runner.join(300)
    assert killed, f"no unit-stage or pool actor was found mid-run: {stage}, {pool}"
    result = outcome["result"]
    assert not isinstance(result, BaseException), result
    assert_exactly_once(s, result.run_id)


def _run(s: Settings, request: BatchRequest | None = None):
    try:
        return run_batch_inference(s, request)
    except BaseException as error:  # handed to the test thread
        return error


def test_a_poisoned_unit_is_reported_not_retried_forever(batch: Settings) -> None:
    s = _fresh(batch, "poison", 1200, unit_max_attempts=2)
    table = load_table(s, s.features_table)
    before = {task.file.file_path for task in table.scan().plan_files()}
    poison = feature_rows(s, 3, seed=6)
    table.append(poison)  # a data file of its own: one unit
    [path] = {task.file.file_path for task in table.refresh().scan().plan_files()} - before
    # Another tool damaged the file: same rows and row group, the feature columns gone.
    pq.write_table(poison.select([s.key_column]), path.removeprefix("file://"))
    with pytest.raises(BatchInferenceFailed, match="read failed") as failure:
        run_batch_inference(s)
    store = CheckpointStore(s.resolved_database_url)
    run = store.list_runs(1)[0]
    [bad] = store.units(run.run_id, "failed")
    assert bad.attempts == 2 and "read failed" in (bad.last_error or "")
    assert f"unit {bad.unit}" in str(failure.value)
    assert run.status == "failed"
    assert len(store.units(run.run_id, "done")) == len(store.units(run.run_id)) - 1
    assert len(predictions_of(s, run.run_id)) == 1200  # every healthy row, once

    tolerant = s.model_copy(update={"max_failed_fraction": 0.01})
    again = BatchRequest(resume_run_id=run.run_id)  # an explicit resume: the failed unit retried
    resumed = run_batch_inference(tolerant, again)
    assert resumed.resumed and resumed.skipped_rows == 1200 and resumed.predicted_rows == 0
    assert [f.unit for f in resumed.failed_units] == [bad.unit]
    assert resumed.failed_units[0].attempts == 2
    assert store.get_run(run.run_id).status == "partial"


def test_fused_and_separated_modes_predict_the_same_and_filters_apply(batch: Settings) -> None:
    s = _fresh(batch, "modes", 2000, row_group=500)
    fused = run_batch_inference(s, BatchRequest(mode="fused"))
    separated = run_batch_inference(s, BatchRequest(mode="separated"))
    assert fused.run_id != separated.run_id and (fused.mode, separated.mode) == (
        "fused",
        "separated",
    )
    a = assert_exactly_once(s, fused.run_id).set_index(s.key_column).sort_index()
    b = assert_exactly_once(s, separated.run_id).set_index(s.key_column).sort_index()
    assert (a["class_index"] == b["class_index"]).all() and (a["label"] == b["label"]).all()
    np.testing.assert_array_equal(np.stack(a["probabilities"]), np.stack(b["probabilities"]))

    column = s.feature_columns[0]
    filtered = run_batch_inference(s, BatchRequest(row_filter=f"{column} > 6.0"))
    assert filtered.run_id not in (fused.run_id, separated.run_id)  # another job
    features = load_table(s, s.features_table).scan().to_pandas()
    wanted = set(features[features[column] > 6.0][s.key_column])
    got = predictions_of(s, filtered.run_id)[s.key_column]
    assert 0 < len(wanted) < len(features) and got.is_unique and set(got) == wanted


def test_a_concurrent_second_run_is_refused_and_nothing_doubles(batch: Settings) -> None:
    s = _fresh(batch, "concurrent", 3000)
    code = (
        "from mlplatform.inference.batch.runner import run_batch_inference as r; "
        "from mlplatform.settings import Settings; print('run_id=' + r(Settings()).run_id)"
    )
    log = s.local_dir / "concurrent-first.log"
    with log.open("w") as stderr:
        first = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=PROJECT_DIR,
            env=_env(s),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        store = CheckpointStore(s.resolved_database_url)
        deadline = time.monotonic() + 120
        run_id = None
        while time.monotonic() < deadline and first.poll() is None:
            run_id = _current_run_id(s)
            if run_id and store.get_run(run_id).owner:
                break  # the first holds the lease: the second starts now, in this process
            time.sleep(0.02)
        with pytest.raises(RunInProgress, match=f"run {run_id} is being executed by"):
            run_batch_inference(s)
        out, _ = first.communicate(timeout=300)
    finally:
        first.kill()
    err = log.read_text()
    assert first.returncode == 0, err[-2000:]
    # Ray forwards its workers' and raylet's lines to the driver's stdout: find ours.
    assert f"run_id={run_id}" in out.splitlines(), out[-2000:]
    rows = assert_exactly_once(s, run_id)
    everything = load_table(s, s.predictions_table).scan().to_pandas()
    assert len(everything) == len(rows)  # no other run wrote predictions


def test_concurrent_commits_and_starts_of_one_job_land_once(batch: Settings) -> None:
    # Tables and database of its own: the runs it opens are not the module's latest run,
    # which the kill -9 test watches.
    s = module_settings(batch, "race")
    race_commits(s)
    race_open_run(s)


def test_job_key_separates_filters_models_and_predictors() -> None:
    base = job_key("ml.features", 1, 2, None)
    assert base == job_key("ml.features", 1, 2, "") == job_key("ml.features", 1, 2, None, None)
    assert (
        len(
            {
                base,
                job_key("ml.features", 1, 3, None),
                job_key("ml.features", 1, 2, "a > 1"),
                job_key("ml.features", 9, 2, None),
                job_key("ml.features", 1, 2, None, "mine.py:Mine||{}"),
            }
        )
        == 5
    )
