"""A bounded, stratified, seeded sample of rows, drawn from batches in bounded memory.

Each class gets a quota of the sample in proportion to its share of the rows (largest remainder,
so the quotas add up to exactly the size), after every class first keeps up to MIN_PER_CLASS
rows, so that a rare class is never sampled away and can still be split into train and holdout.
Within a class, the rows kept are those whose key has the smallest seeded hash: a uniform
random choice that depends only on the keys and the seed, not on file order or batch sizes, so
one snapshot and one seed always give the same rows. Batches are folded in one at a time, so
memory holds the sample plus one batch, never the whole table.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterable, Mapping

import pandas as pd

MIN_PER_CLASS = 2
_RANK = "__sample_rank"


def allocate(
    counts: Mapping[Hashable, int], size: int, min_per_class: int = MIN_PER_CLASS
) -> dict[Hashable, int]:
    """Rows to take of each class for a sample of at most `size` rows; all of them if they fit.

    Raises ValueError when `size` cannot hold `min_per_class` rows of every class.
    """
    if size < 1:
        raise ValueError(f"sample size must be at least 1, got {size}")
    if any(n < 0 for n in counts.values()):
        raise ValueError(f"class counts must not be negative: {dict(counts)}")
    total = sum(counts.values())
    if total <= size:
        return dict(counts)
    floor = {label: min(n, min_per_class) for label, n in counts.items()}
    if sum(floor.values()) > size:
        raise ValueError(
            f"a sample of {size} rows cannot keep {min_per_class} rows of each of "
            f"{len(counts)} classes; raise the sample size (MLP_TRAINING_SAMPLE_ROWS)"
        )
    spare = {label: n - floor[label] for label, n in counts.items()}
    room, spare_total = size - sum(floor.values()), sum(spare.values())
    # Each class's share of the room, in integers: room * spare / spare_total = whole + part.
    # room < spare_total (total > size), so no class gets more rows than it has.
    whole = {label: room * n // spare_total for label, n in spare.items()}
    part = {label: room * n % spare_total for label, n in spare.items()}
    quota = {label: floor[label] + whole[label] for label in counts}
    left = size - sum(quota.values())
    # Largest remainders first; ties go to the larger class, then by label: never by the order
    # in which the classes were counted, which follows the files.
    order = sorted(counts, key=lambda label: (-part[label], -counts[label], str(label)))
    for label in order[:left]:
        quota[label] += 1
    return quota


def hash_key(seed: int) -> str:
    """The 16-character key of pandas' SipHash, derived from the seed."""
    return hashlib.blake2b(str(seed).encode(), digest_size=8).hexdigest()


def ranks(keys: pd.Series, seed: int) -> pd.Series:
    """A seeded pseudo-random rank (uint64) per key; equal keys get equal ranks."""
    values = pd.util.hash_pandas_object(keys, index=False, hash_key=hash_key(seed))
    return pd.Series(values.to_numpy(), index=keys.index)


class StratifiedSampler:
    """Folds batches of rows into a stratified sample with fixed per-class quotas."""

    def __init__(
        self, quotas: Mapping[Hashable, int], key_column: str, label_column: str, seed: int
    ) -> None:
        self.quotas = dict(quotas)
        self.key_column, self.label_column, self.seed = key_column, label_column, seed
        self._kept: pd.DataFrame | None = None

    def add(self, batch: pd.DataFrame) -> None:
        """Keep, per class, the rows of smallest rank among those kept so far and `batch`."""
        batch = batch.assign(**{_RANK: ranks(batch[self.key_column], self.seed)})
        if self._kept is not None:
            batch = batch[~self._cannot_enter(batch)]
            batch = pd.concat([self._kept, batch], ignore_index=True)
        # Equal ranks are equal keys (or a 64-bit hash collision): those keep arrival order.
        rows = batch.sort_values([self.label_column, _RANK], kind="stable", ignore_index=True)
        quota = rows[self.label_column].map(self.quotas).fillna(0)
        position = rows.groupby(self.label_column, sort=False).cumcount()
        self._kept = rows[position < quota].reset_index(drop=True)

    def _cannot_enter(self, batch: pd.DataFrame) -> pd.Series:
        """Rows of a class whose quota is filled, ranked above the largest rank kept of it."""
        kept = self._kept.groupby(self.label_column)[_RANK].agg(["max", "size"])
        filled = kept["size"] >= kept.index.map(self.quotas).fillna(0)
        # float64 rounds monotonically: a row it puts above the limit is above it.
        limit = kept["max"].astype("float64").where(filled)
        above = batch[_RANK].astype("float64") > batch[self.label_column].map(limit)
        return above.fillna(False).astype(bool)

    def result(self) -> pd.DataFrame:
        """The sample, ordered by key (the order the train/holdout split expects)."""
        if self._kept is None:
            return pd.DataFrame()
        sample = self._kept.drop(columns=_RANK)
        return sample.sort_values(self.key_column, kind="stable", ignore_index=True)


def stratified_sample(
    frame: pd.DataFrame, key_column: str, label_column: str, size: int, seed: int
) -> pd.DataFrame:
    """`frame`'s stratified sample of at most `size` rows (all rows if they fit), by key."""
    counts = frame[label_column].value_counts(sort=False).to_dict()
    sampler = StratifiedSampler(allocate(counts, size), key_column, label_column, seed)
    sampler.add(frame)
    return sampler.result()


def sample_batches(
    batches: Iterable[pd.DataFrame],
    counts: Mapping[Hashable, int],
    key_column: str,
    label_column: str,
    size: int,
    seed: int,
) -> pd.DataFrame:
    """The stratified sample of rows arriving in batches, whose class counts are known."""
    sampler = StratifiedSampler(allocate(counts, size), key_column, label_column, seed)
    for batch in batches:
        sampler.add(batch)
    return sampler.result()
