"""Named leases in the platform's SQL database: one holder at a time across processes and hosts.

A lease is a row keyed by its name. Taking it inserts the row; a second taker finds the row and
is refused while the holder is live. The holder renews its heartbeat (`held_lease` does so from a
thread) and deletes the row when it is done. A holder that crashed stops renewing: its lease is
taken over once the heartbeat is older than the lease's TTL, or at once when the holder ran on
this host and its process is gone. Every change is a compare-and-set on the row, so two takers
racing for a free or an expired lease never both win; this works alike on SQLite and PostgreSQL.
Heartbeats are the holders' clocks in UTC: hosts sharing a database need roughly synced clocks
(seconds, against TTLs of minutes).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import DateTime, Float, String, Text, delete, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from checkpoints.database import Base, get_engine
from checkpoints.store import _owner_gone, process_owner

log = logging.getLogger(__name__)
TAKE_ATTEMPTS = 5


class LeaseRow(Base):
    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner: Mapped[str] = mapped_column(String(160))
    holder: Mapped[str] = mapped_column(Text)  # what holds it, in words, for the refusal message
    acquired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ttl_s: Mapped[float] = mapped_column(Float)


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(moment: datetime) -> datetime:
    """SQLite hands timestamps back without their zone; they were written in UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, as read when a taker was refused."""

    name: str
    owner: str
    holder: str
    acquired_at: datetime
    heartbeat_age_s: float
    ttl_s: float


class LeaseHeld(RuntimeError):
    """The lease is held by a live holder; `holder` says who."""

    def __init__(self, holder: Holder) -> None:
        self.holder = holder
        super().__init__(
            f"lease {holder.name!r} is held by {holder.holder} (process {holder.owner}, since "
            f"{holder.acquired_at:%Y-%m-%d %H:%M:%S} UTC, heartbeat {holder.heartbeat_age_s:.0f} s "
            f"ago); it is given back when that run ends, or {holder.ttl_s:.0f} s after its last "
            "heartbeat if its process died"
        )


class LeaseLost(RuntimeError):
    """This process no longer holds a lease it took (another took it over after it expired)."""


def _live(row: LeaseRow, now: datetime) -> bool:
    age = (now - _utc(row.heartbeat_at)).total_seconds()
    return age < row.ttl_s and not _owner_gone(row.owner)


def acquire(url: str, name: str, owner: str, holder: str, ttl_s: float) -> None:
    """Take the lease `name` for `owner`, or raise LeaseHeld naming the live holder."""
    if ttl_s <= 0:
        raise ValueError(f"lease {name!r}: ttl_s must be positive, got {ttl_s}")
    engine = get_engine(url)
    for _ in range(TAKE_ATTEMPTS):
        now = _now()
        try:
            with Session(engine) as session, session.begin():
                session.add(
                    LeaseRow(
                        name=name,
                        owner=owner,
                        holder=holder,
                        acquired_at=now,
                        heartbeat_at=now,
                        ttl_s=ttl_s,
                    )
                )
            return
        except IntegrityError:
            pass  # the row exists: held, or left by a holder that died
        with Session(engine) as session:
            row = session.get(LeaseRow, name)
        if row is None:
            continue  # given back in between: insert again
        if row.owner == owner:
            return
        if _live(row, now):
            age = (now - _utc(row.heartbeat_at)).total_seconds()
            raise LeaseHeld(
                Holder(name, row.owner, row.holder, _utc(row.acquired_at), age, row.ttl_s)
            )
        # Expired: take it over only if nobody renewed or took it since we read it.
        with Session(engine) as session, session.begin():
            taken = session.execute(
                update(LeaseRow)
                .where(LeaseRow.name == name, LeaseRow.owner == row.owner)
                .where(LeaseRow.heartbeat_at == row.heartbeat_at)
                .values(owner=owner, holder=holder, acquired_at=now, heartbeat_at=now, ttl_s=ttl_s)
            )
        if taken.rowcount == 1:
            log.warning("lease %r: took it over from %s, whose heartbeat expired", name, row.holder)
            return
    raise RuntimeError(f"lease {name!r}: could not take or read it after {TAKE_ATTEMPTS} tries")


def renew(url: str, name: str, owner: str) -> bool:
    """Renew the heartbeat; False when `owner` no longer holds the lease."""
    with Session(get_engine(url)) as session, session.begin():
        renewed = session.execute(
            update(LeaseRow)
            .where(LeaseRow.name == name, LeaseRow.owner == owner)
            .values(heartbeat_at=_now())
        )
    return renewed.rowcount == 1


def release(url: str, name: str, owner: str) -> None:
    """Give the lease back (nothing happens when `owner` no longer holds it)."""
    with Session(get_engine(url)) as session, session.begin():
        session.execute(delete(LeaseRow).where(LeaseRow.name == name, LeaseRow.owner == owner))


class HeldLease:
    """A lease this process holds, renewed from a daemon thread every ttl_s / 4."""

    def __init__(self, url: str, name: str, owner: str, ttl_s: float) -> None:
        self.url, self.name, self.owner, self.ttl_s = url, name, owner, ttl_s
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"lease-{name}", daemon=True)

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                if not renew(self.url, self.name, self.owner):
                    self._lost.set()
                    return
            except Exception:  # a database hiccup: the next beat tries again before the TTL
                log.exception("lease %r: heartbeat failed", self.name)

    def check(self) -> None:
        """Raise LeaseLost when another process took the lease over (this one stalled)."""
        if self._lost.is_set() or not renew(self.url, self.name, self.owner):
            raise LeaseLost(
                f"lease {self.name!r}: another process took it over after this one missed its "
                f"heartbeats for {self.ttl_s:.0f} s; stopping before changing shared state"
            )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def held_lease(url: str, name: str, holder: str, ttl_s: float) -> Iterator[HeldLease]:
    """Hold the lease `name` for the block, renewing it; LeaseHeld when a live holder has it."""
    owner = process_owner()
    acquire(url, name, owner, holder, ttl_s)
    lease = HeldLease(url, name, owner, ttl_s)
    lease.start()
    try:
        yield lease
    finally:
        lease.stop()
        try:
            release(url, name, owner)
        except Exception:  # keep the block's own error; the lease expires after its TTL
            log.exception("lease %r: could not give it back; it expires in %.0f s", name, ttl_s)
