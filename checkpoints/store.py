"""Checkpoint tables and their operations: runs, jobs, units, and the run lease (see the package
docstring for the commit protocol they take part in)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import BigInteger, DateTime, Integer, String, Text, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from checkpoints.database import Base, get_engine

PENDING, DONE, FAILED = "pending", "done", "failed"


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(moment: datetime) -> datetime:
    """SQLite hands timestamps back without their zone; they were written in UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class RunInProgress(RuntimeError):
    """Another live process holds the run's lease."""


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
    job_key: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    row_filter: Mapped[str | None] = mapped_column(Text, nullable=True)
    units_total: Mapped[int] = mapped_column(Integer, default=0)
    owner: Mapped[str | None] = mapped_column(String(160), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Runs that continue one another (revision 0006): same dataset, model version, row filter and
    # predictor. since_snapshot_id: the run predicts the rows appended after this snapshot.
    lineage: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    since_snapshot_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Job(Base):
    """The current run of each job; its key makes concurrent starts of one job share a run."""

    __tablename__ = "checkpoint_jobs"

    job_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64))


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
    file_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    first_row_group: Mapped[int] = mapped_column(Integer, default=0)
    row_groups: Mapped[int] = mapped_column(Integer, default=0)


@dataclass(frozen=True)
class UnitPlan:
    """A unit of work: row groups [first_row_group, first_row_group + row_groups) of a file."""

    unit: int
    file_path: str
    first_row_group: int
    row_groups: int
    rows: int


def process_owner() -> str:
    """host:pid:nonce of this process, for the run lease."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _owner_gone(owner: str) -> bool:
    """True when the owner ran on this host and its process no longer exists."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class CheckpointStore:
    """Runs, jobs and units in the SQL database named by a SQLAlchemy URL."""

    def __init__(self, url: str) -> None:
        self.engine = get_engine(url)

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def find_succeeded(
        self, kind: str, dataset: str, snapshot_id: int, model_version: int
    ) -> Run | None:
        """The newest successful run of the same job."""
        with self._session() as session:
            return session.scalars(
                select(Run)
                .where(Run.kind == kind, Run.dataset == dataset, Run.snapshot_id == snapshot_id)
                .where(Run.model_version == model_version, Run.status == "succeeded")
                .order_by(Run.started_at.desc())
            ).first()

    def latest_of_lineage(self, lineage: str, model_version: int | None = None) -> Run | None:
        """The newest run of the lineage, of `model_version` when given (incremental batch
        inference continues from it)."""
        query = select(Run).where(Run.lineage == lineage)
        if model_version is not None:
            query = query.where(Run.model_version == model_version)
        with self._session() as session:
            return session.scalars(query.order_by(Run.started_at.desc())).first()

    def runs_holding(self, dataset: str, since: datetime) -> tuple[list[Run], list[Run]]:
        """The runs over `dataset` whose snapshots table maintenance keeps: (every unfinished
        run, the newest run of each lineage that started since `since`)."""
        with self._session() as session:
            unfinished = session.scalars(
                select(Run).where(Run.dataset == dataset, Run.status.in_(("running", "failed")))
            ).all()
            recent = session.scalars(
                select(Run)
                .where(Run.dataset == dataset, Run.lineage.is_not(None), Run.started_at >= since)
                .order_by(Run.started_at.desc())
            ).all()
        heads: dict[str | None, Run] = {}
        for run in recent:
            heads.setdefault(run.lineage, run)
        return list(unfinished), list(heads.values())

    def get_run(self, run_id: str) -> Run:
        with self._session() as session:
            run = session.get(Run, run_id)
        if run is None:
            raise LookupError(f"no checkpointed run with id {run_id!r}")
        return run

    def start_run(self, run_id: str | None = None, **fields: object) -> Run:
        run = Run(run_id=run_id or uuid.uuid4().hex, status="running", **fields)
        with self._session() as session:
            session.add(run)
            session.commit()
        return run

    def open_run(
        self,
        job_key: str,
        run_id: str | None,
        plan: Callable[[], list[UnitPlan]],
        **fields: object,
    ) -> tuple[Run, bool]:
        """The job's unfinished run (resumed=True), or a new run with the units plan() gives.

        plan() runs only for a new run. The run, its units and the job row are written in one
        transaction; when another process creates the same job at the same moment, the job
        row's key makes one of them lose and continue the winner's run instead.
        """
        units: list[UnitPlan] | None = None
        for _ in range(3):
            with self._session() as session:
                job = session.get(Job, job_key)
                current = session.get(Run, job.run_id) if job else None
            if current is not None and current.status != "succeeded":
                return current, True
            units = plan() if units is None else units
            run = Run(
                run_id=run_id or uuid.uuid4().hex,
                status="running",
                job_key=job_key,
                units_total=len(units),
                rows_total=sum(u.rows for u in units),
                **fields,
            )
            try:
                with self._session() as session, session.begin():
                    session.add(run)
                    session.add_all(
                        Unit(
                            run_id=run.run_id,
                            unit=u.unit,
                            status=PENDING,
                            rows_in=u.rows,
                            rows_out=0,
                            attempts=0,
                            file_path=u.file_path,
                            first_row_group=u.first_row_group,
                            row_groups=u.row_groups,
                        )
                        for u in units
                    )
                    if job is None:
                        session.add(Job(job_key=job_key, run_id=run.run_id))
                    else:  # the job's last run succeeded: this run replaces it, unless raced
                        swapped = session.execute(
                            update(Job)
                            .where(Job.job_key == job_key, Job.run_id == job.run_id)
                            .values(run_id=run.run_id)
                        )
                        if swapped.rowcount != 1:
                            raise IntegrityError("job row changed", None, Exception())
                return run, False
            except IntegrityError:
                continue  # another process created this job's run first: take that one
        raise RuntimeError(f"could not open a run for job {job_key} after 3 tries")

    def acquire(self, run_id: str, owner: str, ttl_s: float) -> None:
        """Take the run's lease, or raise RunInProgress naming the live holder."""
        run = self.get_run(run_id)
        holder = run.owner
        if holder and holder != owner:
            age = (_now() - _utc(run.heartbeat_at)).total_seconds() if run.heartbeat_at else 1e9
            if age < ttl_s and not _owner_gone(holder):
                raise RunInProgress(
                    f"run {run_id} is being executed by {holder} (heartbeat {age:.0f} s ago); "
                    "not starting a second copy. Retry when it has ended, or "
                    f"{ttl_s:.0f} s after it died."
                )
        with self._session() as session, session.begin():
            taken = session.execute(
                update(Run)
                .where(Run.run_id == run_id)
                .where(Run.owner.is_(None) if holder is None else Run.owner == holder)
                .values(owner=owner, heartbeat_at=_now(), status="running", finished_at=None)
            )
        if taken.rowcount != 1:
            raise RunInProgress(f"run {run_id}: another process took the lease at the same time")

    def heartbeat(self, run_id: str, owner: str) -> bool:
        """Renew the lease; False when this process no longer holds it."""
        with self._session() as session, session.begin():
            renewed = session.execute(
                update(Run)
                .where(Run.run_id == run_id, Run.owner == owner)
                .values(heartbeat_at=_now())
            )
        return renewed.rowcount == 1

    def finish(self, run_id: str, owner: str, status: str, error: str | None = None) -> None:
        """Set the final status and give the lease back."""
        with self._session() as session, session.begin():
            session.execute(
                update(Run)
                .where(Run.run_id == run_id, Run.owner == owner)
                .values(status=status, error=error, finished_at=_now(), owner=None)
            )

    def units(self, run_id: str, *statuses: str) -> list[Unit]:
        """The run's units in order, only those with the given statuses when any are given."""
        query = select(Unit).where(Unit.run_id == run_id).order_by(Unit.unit)
        if statuses:
            query = query.where(Unit.status.in_(statuses))
        with self._session() as session:
            return list(session.scalars(query))

    def mark_done(self, run_id: str, rows_out: dict[int, int], snapshot_id: int | None) -> None:
        """Units committed to Iceberg (step 4 of the protocol, or its reconciliation)."""
        with self._session() as session, session.begin():
            for unit, rows in rows_out.items():
                session.execute(
                    update(Unit)
                    .where(Unit.run_id == run_id, Unit.unit == unit, Unit.status != DONE)
                    .values(
                        status=DONE,
                        rows_out=rows,
                        committed_snapshot_id=snapshot_id,
                        attempts=Unit.attempts + 1,
                        last_error=None,
                        updated_at=_now(),
                    )
                )

    def mark_attempt_failed(self, run_id: str, errors: dict[int, str], max_attempts: int) -> None:
        """One more failed attempt per unit; failed for good after max_attempts."""
        with self._session() as session, session.begin():
            for unit, error in errors.items():
                row = session.get(Unit, (run_id, unit))
                if row is None or row.status == DONE:
                    continue
                row.attempts += 1
                row.last_error = error[:2000]
                row.status = FAILED if row.attempts >= max_attempts else PENDING
                row.updated_at = _now()

    def retry_failed(self, run_id: str) -> int:
        """Give failed units new attempts (an explicit resume); how many there were."""
        with self._session() as session, session.begin():
            result = session.execute(
                update(Unit)
                .where(Unit.run_id == run_id, Unit.status == FAILED)
                .values(status=PENDING, attempts=0)
            )
        return result.rowcount

    def list_runs(self, limit: int = 20) -> list[Run]:
        """The newest runs first."""
        with self._session() as session:
            return list(session.scalars(select(Run).order_by(Run.started_at.desc()).limit(limit)))

    def progress(self, run_id: str) -> tuple[int, int]:
        """(units done, rows written) for a run."""
        with Session(self.engine) as session:
            units, rows = session.execute(
                select(func.count(), func.coalesce(func.sum(Unit.rows_out), 0)).where(
                    Unit.run_id == run_id, Unit.status == DONE
                )
            ).one()
        return int(units), int(rows)
