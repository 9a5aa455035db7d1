"""The unit stage of batch inference (runs without a user preprocessor): light Ray Data actors
that hand each batch of unit specs to the model's warm pool, where every unit is read,
predicted and written (model_stage.run_units): fused, in the pool's actors (model_pool.PoolClient);
separated, in this actor, the model called through Serve (model_stage.ServeClient). No feature or
prediction row passes through Ray Data, and the driver gets one metadata row per unit.

This module is what every unit-stage actor imports at its start, once per run: it stays light
(no PyIceberg, SQLAlchemy or scikit-learn; the run's UnitWork stays in the object store).
"""

from __future__ import annotations

from typing import Any, Protocol

import pyarrow as pa

from mlplatform.connectors.niceness import set_niceness


class UnitPool(Protocol):
    """A model's warm pool as the unit stage sees it: unit specs in, metadata rows out."""

    def run_units(self, specs: list[dict], work: Any) -> pa.Table: ...


class UnitStage:
    """The Ray Data actor: each batch of unit specs to `pool`, with the run's UnitWork (`work`,
    an object reference, in a list so that nothing resolves it on the way)."""

    def __init__(self, work: list[Any], pool: UnitPool, niceness: int | None = None) -> None:
        if niceness is not None:
            set_niceness(niceness)
        [self.work], self.pool = work, pool

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.pool.run_units(batch.to_pylist(), self.work)
