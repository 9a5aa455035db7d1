"""Checkpoint tables: one row per run and one per committed unit of work.

Commit protocol of batch inference (see mlplatform.batch_inference):
  1. a unit's predictions are appended to the Iceberg predictions table in one commit, whose
     snapshot summary carries the run id and unit number, and whose rows carry the run id;
  2. then the unit's row here is written as done, with the Iceberg snapshot id.
A crash between 1 and 2 leaves rows in Iceberg without a unit row; a crash before 1 leaves
neither. At resume the Iceberg table is trusted over these rows: keys already present for the
run are skipped, so each input row gets exactly one prediction. These rows give progress,
attempts and errors.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import BigInteger, DateTime, Integer, String, Text, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from mlplatform.database import Base, get_engine


def _now() -> datetime:
    return datetime.now(UTC)


class Run(Base):
    __tablename__ = "checkpoint_runs"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    dataset: Mapped[str] = mapped_column(String(256))
    snapshot_id: Mapped[int] = mapped_column(BigInteger)
    model_version: Mapped[int] = mapped_column(Integer)
    mode: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="running")
    rows_total: Mapped[int] = mapped_column(BigInteger, default=0)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class Unit(Base):
    __tablename__ = "checkpoint_units"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    unit: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    rows_in: Mapped[int] = mapped_column(BigInteger)
    rows_out: Mapped[int] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    committed_snapshot_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class CheckpointStore:
    """Runs and units in the SQL database named by a SQLAlchemy URL."""

    def __init__(self, url: str) -> None:
        self.engine = get_engine(url)

    def _newest(self, kind: str, dataset: str, snapshot_id: int, model_version: int, *where):
        with Session(self.engine, expire_on_commit=False) as session:
            return session.scalars(
                select(Run)
                .where(Run.kind == kind, Run.dataset == dataset, Run.snapshot_id == snapshot_id)
                .where(Run.model_version == model_version, *where)
                .order_by(Run.started_at.desc())
            ).first()

    def find_unfinished(
        self, kind: str, dataset: str, snapshot_id: int, model_version: int
    ) -> Run | None:
        """The newest run of the same job that did not succeed, to be continued."""
        return self._newest(kind, dataset, snapshot_id, model_version, Run.status != "succeeded")

    def find_succeeded(
        self, kind: str, dataset: str, snapshot_id: int, model_version: int
    ) -> Run | None:
        """The newest successful run of the same job."""
        return self._newest(kind, dataset, snapshot_id, model_version, Run.status == "succeeded")

    def get_run(self, run_id: str) -> Run:
        with Session(self.engine, expire_on_commit=False) as session:
            run = session.get(Run, run_id)
        if run is None:
            raise LookupError(f"no checkpointed run with id {run_id!r}")
        return run

    def start_run(self, run_id: str | None = None, **fields: object) -> Run:
        run = Run(run_id=run_id or uuid.uuid4().hex, status="running", **fields)
        with Session(self.engine, expire_on_commit=False) as session:
            session.add(run)
            session.commit()
        return run

    def set_status(self, run_id: str, status: str, error: str | None = None) -> None:
        with Session(self.engine) as session, session.begin():
            run = session.get(Run, run_id)
            if run is None:
                raise LookupError(f"no checkpointed run with id {run_id!r}")
            run.status, run.error = status, error
            run.finished_at = _now() if status != "running" else None

    def record_unit(
        self, run_id: str, unit: int, rows_in: int, rows_out: int, snapshot_id: int | None
    ) -> None:
        with Session(self.engine) as session, session.begin():
            session.merge(
                Unit(
                    run_id=run_id, unit=unit, status="done", rows_in=rows_in, rows_out=rows_out,
                    committed_snapshot_id=snapshot_id, updated_at=_now(),
                )
            )  # fmt: skip

    def list_runs(self, limit: int = 20) -> list[Run]:
        """The newest runs first."""
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.scalars(select(Run).order_by(Run.started_at.desc()).limit(limit)))

    def progress(self, run_id: str) -> tuple[int, int]:
        """(units done, rows written) for a run."""
        with Session(self.engine) as session:
            units, rows = session.execute(
                select(func.count(), func.coalesce(func.sum(Unit.rows_out), 0)).where(
                    Unit.run_id == run_id, Unit.status == "done"
                )
            ).one()
        return int(units), int(rows)

    def next_unit(self, run_id: str) -> int:
        with Session(self.engine) as session:
            last = session.scalar(select(func.max(Unit.unit)).where(Unit.run_id == run_id))
        return 0 if last is None else int(last) + 1
