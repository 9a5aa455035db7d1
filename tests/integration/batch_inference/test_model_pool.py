"""Warm model pools on real Ray (inference.batch.model_pool): a second run finds the pool's
processes with the model loaded, a new version is loaded in the same processes, an idle pool
shrinks to zero, a killed pool actor is created again and nothing is lost or doubled."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator

import pytest
from sklearn.ensemble import RandomForestClassifier

from mlplatform.connectors.ray_runtime import connect
from mlplatform.inference.batch.model_pool import pool_prefix, release_pools
from mlplatform.inference.batch.request import BatchRequest
from mlplatform.inference.batch.runner import run_batch_inference
from mlplatform.registry import model_registry
from mlplatform.sample_data.synthetic_features import append_features, feature_rows
from mlplatform.settings import Settings
from mlplatform.training.retrain import retrain
from tests.helpers import module_settings, pool_pids, wait_until
from tests.integration.batch_inference.exactly_once import assert_exactly_once, predictions_of

pytestmark = pytest.mark.integration

ROWS, UNIT = 2000, 500


def every_row(s: Settings) -> str:
    """A row filter that keeps every row: a job of its own over the same snapshot."""
    return f"{s.feature_columns[0]} >= 0"


def _lake(isolated: Settings, name: str, **overrides: object) -> Settings:
    """Tables, database and champion of one test's own; Ray connected."""
    name = f"{name}{uuid.uuid4().hex[:6]}"  # a namespace of each test's own
    s = module_settings(
        isolated, name, unit_rows=UNIT, batch_size=UNIT, commit_every_s=0.2, **overrides
    )
    append_features(s, ROWS, seed=7, row_group_rows=UNIT)
    assert retrain(s, on_ray=False).decision == "promote"
    connect(s)
    return s


@pytest.fixture
def warm(isolated: Settings) -> Iterator[Settings]:
    s = _lake(isolated, "pool", pool_idle_s=120)
    yield s
    release_pools(pool_prefix(s))


def _register_second_version(s: Settings) -> int:
    """Another forest on the same features, registered beside the champion (not promoted)."""
    champion = model_registry.get_version(s)
    data = feature_rows(s, 300, seed=11)
    x = data.select(list(champion.feature_order)).to_pandas().to_numpy()
    model = RandomForestClassifier(n_estimators=5, random_state=1)
    model.fit(x, data[s.label_column].to_numpy())
    return model_registry.register(
        s,
        model,
        family="random_forest",
        params={"n_estimators": 5},
        metrics={"accuracy": 0.0},
        training_table=s.table_id(s.features_table),
        training_snapshot_id=0,
        training_rows=300,
        feature_order=list(champion.feature_order),
        label_names=list(champion.label_names),
    ).version


def test_a_second_run_finds_the_pool_warm_and_a_new_version_loads_in_place(warm: Settings) -> None:
    s = warm
    first = run_batch_inference(s, BatchRequest())
    assert first.predicted_rows == ROWS and "pool_ready" in first.steps
    pids = pool_pids(s)
    assert len(pids) == s.pool_size

    append_features(s, UNIT, seed=8, row_group_rows=UNIT)
    second = run_batch_inference(s, BatchRequest(incremental=True))
    assert second.predicted_rows == UNIT
    assert pool_pids(s) == pids  # the same processes: nothing started, nothing loaded again

    version = _register_second_version(s)
    third = run_batch_inference(s, BatchRequest(model_version=version))
    assert third.predicted_rows == ROWS + UNIT
    assert pool_pids(s) == pids  # the new version loaded in the warm processes
    assert set(predictions_of(s, third.run_id)["model_version"]) == {version}
    assert_exactly_once(s, third.run_id)


def test_an_idle_pool_shrinks_to_zero_and_a_killed_one_is_rebuilt(isolated: Settings) -> None:
    s = _lake(isolated, "idle", pool_idle_s=5)
    try:
        first = run_batch_inference(s, BatchRequest())
        assert first.predicted_rows == ROWS
        wait_until("the idle pool gone", lambda: not pool_pids(s), timeout_s=60)

        second = run_batch_inference(s, BatchRequest(row_filter=every_row(s)))
        assert second.predicted_rows == ROWS  # a new pool, started for the run
        assert_exactly_once(s, second.run_id)
    finally:
        release_pools(pool_prefix(s))


def test_a_pool_actor_killed_between_runs_is_created_again(warm: Settings) -> None:
    s = warm
    run_batch_inference(s, BatchRequest())
    killed = sorted(pool_pids(s).values())
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    wait_until("the killed pool actors gone", lambda: not pool_pids(s), timeout_s=60)
    again = run_batch_inference(s, BatchRequest(row_filter=every_row(s)))  # a job of its own
    assert again.predicted_rows == ROWS
    assert_exactly_once(s, again.run_id)
    assert not set(pool_pids(s).values()) & set(killed)
