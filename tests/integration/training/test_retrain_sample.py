"""The bounded training sample on real Iceberg: streamed from a snapshot of several files, the
same rows as the in-memory sampler, recorded in the model's lineage; all rows when they fit."""

from __future__ import annotations

import pytest

from mlplatform.connectors.iceberg_tables import count_rows, load_table
from mlplatform.registry import model_registry
from mlplatform.sample_data.synthetic_features import append_features
from mlplatform.settings import Settings
from mlplatform.training.retrain import retrain
from mlplatform.training.sample import allocate, stratified_sample
from mlplatform.training.snapshot_sample import read_training_sample
from tests.helpers import module_settings

pytestmark = pytest.mark.integration

ROWS, SAMPLE = 3_000, 500
GRID = [{"family": "decision_tree", "max_depth": 3}]


@pytest.fixture(scope="module")
def lake(isolated: Settings) -> Settings:
    """3,000 feature rows in five files of several row groups each, so the sample is folded from
    many Arrow batches."""
    s = module_settings(
        isolated, "sample", training_sample_rows=SAMPLE, candidate_grid=GRID, seed=11
    )
    append_features(s, ROWS, seed=3, row_group_rows=250, chunk_rows=700)
    return s


def test_a_large_snapshot_is_sampled_as_the_in_memory_sampler_would(lake: Settings) -> None:
    table = load_table(lake, lake.features_table)
    assert count_rows(table) == ROWS > lake.training_sample_rows  # the streamed path
    sample = read_training_sample(lake)
    assert (sample.rows_available, sample.rows_used, sample.seed) == (ROWS, SAMPLE, lake.seed)
    everything = read_training_sample(lake, size=ROWS).frame
    assert len(everything) == ROWS
    counts = everything[lake.label_column].value_counts().to_dict()
    assert sample.frame[lake.label_column].value_counts().to_dict() == {
        label: n for label, n in allocate(counts, SAMPLE).items() if n
    }
    reference = stratified_sample(everything, lake.key_column, lake.label_column, SAMPLE, 11)
    assert list(sample.frame[lake.key_column]) == list(reference[lake.key_column])
    assert list(sample.frame.columns) == [lake.key_column, *lake.feature_columns, lake.label_column]
    again = read_training_sample(lake)
    assert list(again.frame[lake.key_column]) == list(sample.frame[lake.key_column])


def test_retrain_uses_the_sample_and_records_it_in_the_lineage(lake: Settings) -> None:
    result = retrain(lake, on_ray=False)
    assert (result.rows_available, result.rows_used, result.sample_seed) == (ROWS, SAMPLE, 11)
    assert result.training_rows + result.holdout_rows == SAMPLE  # sampled before the split
    assert result.holdout_rows == round(SAMPLE * lake.holdout_fraction)
    version = model_registry.get_version(lake, result.best_version)
    assert (version.rows_available, version.rows_used, version.sample_seed) == (ROWS, SAMPLE, 11)
    assert version.training_rows == result.training_rows


def test_a_snapshot_that_fits_is_used_whole(lake: Settings) -> None:
    roomy = lake.model_copy(update={"training_sample_rows": ROWS})
    result = retrain(roomy, on_ray=False)
    assert result.rows_available == result.rows_used == ROWS
    assert result.training_rows + result.holdout_rows == ROWS
