"""mlplatform.training.sample: bounded, stratified, seeded samples (properties with Hypothesis)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mlplatform.training.sample import (
    MIN_PER_CLASS,
    allocate,
    sample_batches,
    stratified_sample,
)

pytestmark = pytest.mark.unit

KEY, LABEL = "event_id", "label"

class_counts = st.lists(st.integers(min_value=0, max_value=400), min_size=1, max_size=5).map(
    lambda counts: dict(enumerate(counts))
)


def frame_of(counts: dict[int, int], seed: int = 0) -> pd.DataFrame:
    """Rows with unique keys, labelled by `counts`, in a shuffled order."""
    labels = np.concatenate([np.full(n, label) for label, n in counts.items()] + [[]]).astype(int)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    return pd.DataFrame(
        {KEY: [f"ev-{i}" for i in order], LABEL: labels[order], "x": rng.normal(size=len(labels))}
    )


@settings(max_examples=300, deadline=None)
@given(counts=class_counts, size=st.integers(min_value=10, max_value=1500))
def test_allocation_is_bounded_proportional_and_keeps_small_classes(
    counts: dict[int, int], size: int
) -> None:
    quota = allocate(counts, size)
    total = sum(counts.values())
    assert set(quota) == set(counts)
    if total <= size:
        assert quota == counts  # everything fits: all rows
        return
    assert sum(quota.values()) == size  # bounded, and no room wasted
    for label, n in counts.items():
        assert 0 <= quota[label] <= n
        assert quota[label] >= min(n, MIN_PER_CLASS)  # a small class is kept
        # In proportion: off the exact share by at most the rows the floors moved, plus one.
        assert abs(quota[label] - size * n / total) <= MIN_PER_CLASS * len(counts) + 1


def test_allocation_of_a_skewed_lake() -> None:
    counts = {0: 2_990_000, 1: 9_990, 2: 10}  # 3M rows, one class almost absent
    quota = allocate(counts, 200_000)
    assert sum(quota.values()) == 200_000
    assert quota[2] == 2  # kept, though its proportional share is under one row
    assert quota[1] == pytest.approx(200_000 * 9_990 / 3_000_000, abs=3 * MIN_PER_CLASS + 1)
    assert quota[0] == pytest.approx(200_000 * 2_990_000 / 3_000_000, abs=3 * MIN_PER_CLASS + 1)


def test_allocation_does_not_depend_on_the_order_classes_were_counted() -> None:
    counts = {0: 50, 1: 50, 2: 50}  # three equal remainders for one spare row
    assert allocate(counts, 10) == allocate(dict(reversed(counts.items())), 10)


def test_allocation_refuses_a_size_too_small_for_every_class() -> None:
    with pytest.raises(ValueError, match="MLP_TRAINING_SAMPLE_ROWS"):
        allocate({label: 100 for label in range(6)}, 10)
    with pytest.raises(ValueError, match="at least 1"):
        allocate({0: 5}, 0)


@settings(max_examples=100, deadline=None)
@given(
    counts=class_counts,
    size=st.integers(min_value=10, max_value=1500),
    seed=st.integers(min_value=0, max_value=2**31),
)
def test_sample_is_bounded_stratified_and_drawn_from_the_rows(
    counts: dict[int, int], size: int, seed: int
) -> None:
    frame = frame_of(counts)
    sample = stratified_sample(frame, KEY, LABEL, size, seed)
    assert len(sample) == min(size, len(frame))
    assert sample[KEY].is_unique
    assert set(sample[KEY]) <= set(frame[KEY])
    by_key = frame.set_index(KEY)
    np.testing.assert_array_equal(sample[LABEL], by_key.loc[sample[KEY], LABEL])  # rows intact
    np.testing.assert_array_equal(sample["x"], by_key.loc[sample[KEY], "x"])
    got = sample[LABEL].value_counts().to_dict()
    wanted = {label: n for label, n in allocate(counts, size).items() if n}
    assert got == wanted
    assert list(sample[KEY]) == sorted(sample[KEY])  # ordered by key, as the split expects


@settings(max_examples=40, deadline=None)
@given(
    counts=class_counts,
    size=st.integers(min_value=10, max_value=600),
    seed=st.integers(min_value=0, max_value=2**31),
    batch_rows=st.integers(min_value=40, max_value=500),
    shuffle=st.integers(min_value=0, max_value=1000),
)
def test_same_seed_same_rows_whatever_the_order_and_batches(
    counts: dict[int, int], size: int, seed: int, batch_rows: int, shuffle: int
) -> None:
    assume(sum(counts.values()) > 0)
    frame = frame_of(counts)
    whole = stratified_sample(frame, KEY, LABEL, size, seed)
    reordered = frame.sample(frac=1, random_state=shuffle)
    batches = [reordered.iloc[i : i + batch_rows] for i in range(0, len(reordered), batch_rows)]
    streamed = sample_batches(
        batches, frame[LABEL].value_counts().to_dict(), KEY, LABEL, size, seed
    )
    pd.testing.assert_frame_equal(streamed, whole)


def test_another_seed_draws_other_rows() -> None:
    frame = frame_of({0: 3000, 1: 2000})
    first = stratified_sample(frame, KEY, LABEL, 500, seed=7)
    assert set(stratified_sample(frame, KEY, LABEL, 500, seed=7)[KEY]) == set(first[KEY])
    other = stratified_sample(frame, KEY, LABEL, 500, seed=8)
    assert other[LABEL].value_counts().to_dict() == first[LABEL].value_counts().to_dict()
    # Two independent 10% draws of a class share about 10% of their rows, never all of them.
    assert len(set(other[KEY]) & set(first[KEY])) < 0.5 * len(first)


def test_each_class_is_a_uniform_draw() -> None:
    # Not the first rows, nor a block of keys: the chosen rows of a class spread over its range.
    frame = frame_of({0: 10_000})
    sample = stratified_sample(frame, KEY, LABEL, 1000, seed=3)
    positions = np.sort(sample[KEY].str.removeprefix("ev-").astype(int).to_numpy())
    deciles = np.histogram(positions, bins=10, range=(0, 10_000))[0]
    assert deciles.min() > 60 and deciles.max() < 140  # ~100 each


def test_size_at_least_the_rows_keeps_every_row() -> None:
    frame = frame_of({0: 30, 1: 5, 2: 1})
    for size in (36, 37, 10_000):
        sample = stratified_sample(frame, KEY, LABEL, size, seed=1)
        assert sorted(sample[KEY]) == sorted(frame[KEY])
