"""Pulsar Functions on Ray: their registrations, state, counters and input positions in the
platform's SQL database.

A function's state changes (counters, key-value state, a windowed function's open windows) are
written together with the input positions they cover in one transaction (`commit`), before the
inputs are acknowledged. Under EFFECTIVELY_ONCE each input partition is read in order by one
instance, so a message at or below its partition's committed position was already counted: a
crash between this commit and the acknowledgement redelivers it, and the runtime skips it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Integer,
    LargeBinary,
    String,
    Text,
    delete,
    func,
    select,
)
from sqlalchemy import update as sql_update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from checkpoints.database import Base, get_engine

# (ledger, entry, batch index): a message's place in its partition.
Position = tuple[int, int, int]


class FunctionRow(Base):
    __tablename__ = "functions"

    fqfn: Mapped[str] = mapped_column(String(255), primary_key=True)
    spec: Mapped[str] = mapped_column(Text)  # FunctionSpec as JSON
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class FunctionStateRow(Base):
    __tablename__ = "function_state"

    fqfn: Mapped[str] = mapped_column(String(255), primary_key=True)
    key: Mapped[str] = mapped_column(String(512), primary_key=True)
    value: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    counter: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class FunctionPositionRow(Base):
    __tablename__ = "function_positions"

    fqfn: Mapped[str] = mapped_column(String(255), primary_key=True)
    topic: Mapped[str] = mapped_column(String(512), primary_key=True)
    ledger_id: Mapped[int] = mapped_column(BigInteger)
    entry_id: Mapped[int] = mapped_column(BigInteger)
    batch_index: Mapped[int] = mapped_column(Integer)


@dataclass
class StateChanges:
    """What one batch of messages changed, applied by `commit` in one transaction."""

    increments: dict[str, int] = field(default_factory=dict)
    puts: dict[str, bytes] = field(default_factory=dict)
    deleted_counters: set[str] = field(default_factory=set)
    positions: dict[str, Position] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.increments or self.puts or self.deleted_counters or self.positions)


def _now() -> datetime:
    return datetime.now(UTC)


class FunctionStore:
    def __init__(self, url: str) -> None:
        self.engine = get_engine(url)

    # Registrations
    def save(self, fqfn: str, spec_json: str) -> bool:
        """Insert or replace a function's spec; True when it was new."""
        with Session(self.engine) as session, session.begin():
            row = session.get(FunctionRow, fqfn)
            if row is None:
                session.add(
                    FunctionRow(fqfn=fqfn, spec=spec_json, created_at=_now(), updated_at=_now())
                )
                return True
            row.spec, row.updated_at = spec_json, _now()
            return False

    def spec_json(self, fqfn: str) -> str | None:
        with Session(self.engine) as session:
            row = session.get(FunctionRow, fqfn)
            return None if row is None else row.spec

    def created_ms(self, fqfn: str) -> int:
        """When the function was created (0 when it is not registered): names its window
        producers, so that a function created again after a purge starts a fresh sequence."""
        with Session(self.engine) as session:
            row = session.get(FunctionRow, fqfn)
            return 0 if row is None else int(row.created_at.timestamp() * 1000)

    def list(self, prefix: str = "") -> list[str]:
        with Session(self.engine) as session:
            query = select(FunctionRow.fqfn).order_by(FunctionRow.fqfn)
            return [f for f in session.scalars(query) if f.startswith(prefix)]

    def remove(self, fqfn: str, state: bool = False) -> None:
        """Forget the registration (and, with `state`, its state and positions too)."""
        with Session(self.engine) as session, session.begin():
            session.execute(delete(FunctionRow).where(FunctionRow.fqfn == fqfn))
            if state:
                session.execute(delete(FunctionStateRow).where(FunctionStateRow.fqfn == fqfn))
                session.execute(delete(FunctionPositionRow).where(FunctionPositionRow.fqfn == fqfn))

    # State
    def counter(self, fqfn: str, key: str) -> int:
        with Session(self.engine) as session:
            row = session.get(FunctionStateRow, (fqfn, key))
            return (row.counter or 0) if row is not None else 0

    def state(self, fqfn: str, key: str) -> bytes | None:
        with Session(self.engine) as session:
            row = session.get(FunctionStateRow, (fqfn, key))
            return None if row is None else row.value

    def positions(self, fqfn: str) -> dict[str, Position]:
        with Session(self.engine) as session:
            rows = session.scalars(
                select(FunctionPositionRow).where(FunctionPositionRow.fqfn == fqfn)
            )
            return {r.topic: (r.ledger_id, r.entry_id, r.batch_index) for r in rows}

    def commit(self, fqfn: str, changes: StateChanges) -> None:
        """Apply a batch's changes and move its partitions' positions, all or nothing.

        Increments add to the stored value in the database (several instances may count the
        same key at once); positions only move forward."""
        if not changes:
            return
        for attempt in range(3):  # two first writers of one key: the loser finds the row
            try:
                with Session(self.engine) as session, session.begin():
                    self._apply(session, fqfn, changes)
                return
            except IntegrityError:
                if attempt == 2:
                    raise

    @staticmethod
    def _apply(session: Session, fqfn: str, changes: StateChanges) -> None:
        for key in changes.deleted_counters:
            session.execute(
                sql_update(FunctionStateRow)
                .where(FunctionStateRow.fqfn == fqfn, FunctionStateRow.key == key)
                .values(counter=None)
            )
        for key, amount in changes.increments.items():
            done = session.execute(
                sql_update(FunctionStateRow)
                .where(FunctionStateRow.fqfn == fqfn, FunctionStateRow.key == key)
                .values(counter=func.coalesce(FunctionStateRow.counter, 0) + amount)
            )
            if not done.rowcount:  # type: ignore[attr-defined]
                session.add(FunctionStateRow(fqfn=fqfn, key=key, counter=amount))
                session.flush()
        for key, value in changes.puts.items():
            row = session.get(FunctionStateRow, (fqfn, key))
            if row is None:
                session.add(FunctionStateRow(fqfn=fqfn, key=key, value=value))
                session.flush()
            else:
                row.value = value
        for topic, position in changes.positions.items():
            row = session.get(FunctionPositionRow, (fqfn, topic))
            if row is None:
                session.add(
                    FunctionPositionRow(
                        fqfn=fqfn,
                        topic=topic,
                        ledger_id=position[0],
                        entry_id=position[1],
                        batch_index=position[2],
                    )
                )
            elif position > (row.ledger_id, row.entry_id, row.batch_index):
                row.ledger_id, row.entry_id, row.batch_index = position
