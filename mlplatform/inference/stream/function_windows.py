"""Assign messages to count or time windows for windowed Pulsar Functions.

Pure and deterministic: the runtime feeds records (and, in publish-time mode, the clock) and
calls the user's `process` with each window returned. Everything the windower holds is in
`snapshot()`, which the runtime stores in the same transaction as the function's state before
acknowledging the messages; `Windower.restore` then continues exactly where the snapshot left
off, so a crash neither loses nor repeats a window.
"""

from __future__ import annotations

import base64
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

SNAPSHOT_VERSION = 1


def _check_positive(flag: str, value: object) -> None:
    # bool is an int subclass; `--window-length-count true` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{flag} must be an integer, got {value!r}")
    if value <= 0:
        raise ValueError(f"{flag} must be > 0, got {value}")


@dataclass(frozen=True)
class WindowConfig:
    """Window flags as `pulsar-admin functions create` takes them, plus the time semantics."""

    window_length_count: int | None = None
    sliding_interval_count: int | None = None
    window_length_duration_ms: int | None = None
    sliding_interval_duration_ms: int | None = None
    max_lag_ms: int = 0
    timestamp: str = "publish"

    def validate(self) -> None:
        """Raise ValueError naming the offending flag."""
        by_count = self.window_length_count is not None
        by_time = self.window_length_duration_ms is not None
        if by_count == by_time:
            raise ValueError(
                "exactly one of --window-length-count and --window-length-duration-ms must be set"
            )
        if by_count and self.sliding_interval_duration_ms is not None:
            raise ValueError(
                "--sliding-interval-duration-ms needs --window-length-duration-ms, "
                "not --window-length-count"
            )
        if by_time and self.sliding_interval_count is not None:
            raise ValueError(
                "--sliding-interval-count needs --window-length-count, "
                "not --window-length-duration-ms"
            )
        unit = "count" if by_count else "duration-ms"
        length, slide = f"--window-length-{unit}", f"--sliding-interval-{unit}"
        _check_positive(length, self.length)
        _check_positive(slide, self.slide)
        if self.slide > self.length:
            raise ValueError(f"{slide} must be <= {length}")
        # Checked for count windows too, although they ignore them: a typo is still a typo.
        if self.timestamp not in ("publish", "event"):
            raise ValueError(f"--timestamp must be 'publish' or 'event', got {self.timestamp!r}")
        if isinstance(self.max_lag_ms, bool) or not isinstance(self.max_lag_ms, int):
            raise ValueError(f"--max-lag-ms must be an integer, got {self.max_lag_ms!r}")
        if self.max_lag_ms < 0:
            raise ValueError(f"--max-lag-ms must be >= 0, got {self.max_lag_ms}")

    @property
    def kind(self) -> Literal["count", "time"]:
        return "count" if self.window_length_count is not None else "time"

    @property
    def length(self) -> int:
        if self.kind == "count":
            return self.window_length_count  # type: ignore[return-value]
        return self.window_length_duration_ms  # type: ignore[return-value]

    @property
    def slide(self) -> int:
        """The sliding interval; the length itself (tumbling windows) when none was given."""
        given = (
            self.sliding_interval_count
            if self.kind == "count"
            else self.sliding_interval_duration_ms
        )
        return self.length if given is None else given


@dataclass(frozen=True)
class WindowRecord:
    """One message as the user's `process` sees it. Sliding windows share record objects."""

    value: str | bytes
    message_id: str
    topic: str
    timestamp_ms: int  # the time windows use: publish or event time, as configured
    event_time_ms: int | None
    key: str | None
    properties: dict[str, str]


@dataclass(frozen=True)
class Window:
    """A closed window. `sequence` counts 1, 2, 3... per windower, across restores."""

    sequence: int
    start: int  # time: start ms (inclusive); count: arrival index of the first record
    end: int  # time: end ms (exclusive); count: arrival index after the last record
    records: tuple[WindowRecord, ...]


class Windower:
    """Turns a stream of records into closed windows; see the module docstring."""

    def __init__(self, config: WindowConfig) -> None:
        config.validate()
        self._config = config
        self._length = config.length
        self._slide = config.slide
        self._next_sequence = 1
        self._added = 0  # count windows: records ever added (the arrival index of the next)
        # Records a future window may still need, in arrival order (the order windows list).
        self._records: deque[WindowRecord] = deque()
        self._watermark: int | None = None
        self._late: list[WindowRecord] = []

    @property
    def watermark_ms(self) -> int | None:
        return self._watermark

    def add(self, record: WindowRecord) -> list[Window]:
        """Add one record; return the windows its arrival closed, oldest first."""
        if self._config.kind == "count":
            return self._add_counted(record)
        if self._watermark is not None and self._last_end(record.timestamp_ms) <= self._watermark:
            self._late.append(record)
            return []
        self._records.append(record)
        return self._move_watermark(record.timestamp_ms - self._config.max_lag_ms)

    def advance(self, now_ms: int) -> list[Window]:
        """Let the clock close windows; only publish-time windows follow the clock."""
        if self._config.kind == "count" or self._config.timestamp != "publish":
            return []
        return self._move_watermark(now_ms - self._config.max_lag_ms)

    def take_late(self) -> list[WindowRecord]:
        """The records that came after all their windows had closed, since the last call."""
        late, self._late = self._late, []
        return late

    def _emit(self, start: int, end: int, records: list[WindowRecord]) -> Window:
        window = Window(self._next_sequence, start, end, tuple(records))
        self._next_sequence += 1
        return window

    def _add_counted(self, record: WindowRecord) -> list[Window]:
        self._records.append(record)
        self._added += 1
        first = self._added - len(self._records)  # arrival index of self._records[0]
        windows = []
        if self._added % self._slide == 0:
            start = max(0, self._added - self._length)
            windows.append(self._emit(start, self._added, list(self._records)[start - first :]))
        # The next window ends at the next multiple of the slide; keep only what it covers.
        keep_from = (self._added // self._slide + 1) * self._slide - self._length
        while self._records and first < keep_from:
            self._records.popleft()
            first += 1
        return windows

    def _last_end(self, t: int) -> int:
        """End of the last window holding timestamp t (windows are aligned to epoch 0)."""
        return (t // self._slide) * self._slide + self._length

    def _first_k_ending_after(self, t: int) -> int:
        """Index of the first window whose end k*slide + length is > t."""
        return (t - self._length) // self._slide + 1

    def _move_watermark(self, candidate: int) -> list[Window]:
        old = self._watermark
        if old is not None and candidate <= old:
            return []  # the watermark never goes back
        self._watermark = candidate
        # Cheap exit: most arrivals pass no window end, and then nothing can close.
        next_end = None if old is None else self._first_k_ending_after(old) * self._slide
        if next_end is not None and candidate < next_end + self._length:
            return []
        return self._close(old, candidate)

    def _close(self, old: int | None, new: int) -> list[Window]:
        """Emit the non-empty windows whose end is in (old, new], by end then start."""
        # Only windows holding a retained record can be non-empty, so walk the records rather
        # than every window in (old, new]: the clock may jump hours at once.
        contents: dict[int, list[WindowRecord]] = {}
        k_after_old = None if old is None else self._first_k_ending_after(old)
        k_to_new = self._first_k_ending_after(new) - 1
        for record in self._records:
            t = record.timestamp_ms
            k_first = self._first_k_ending_after(t)
            if k_after_old is not None:
                # A window that ended by `old` closed before this record came, if it did.
                k_first = max(k_first, k_after_old)
            for k in range(k_first, min(t // self._slide, k_to_new) + 1):
                contents.setdefault(k, []).append(record)
        self._records = deque(r for r in self._records if self._last_end(r.timestamp_ms) > new)
        # All windows have the same length, so ordering by k orders by end, then start.
        return [
            self._emit(k * self._slide, k * self._slide + self._length, contents[k])
            for k in sorted(contents)
        ]

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to continue, JSON-serialisable (undrained late records included)."""
        return {
            "version": SNAPSHOT_VERSION,
            "kind": self._config.kind,
            "length": self._length,
            "slide": self._slide,
            "timestamp": self._config.timestamp,
            "next_sequence": self._next_sequence,
            "added": self._added,
            "watermark_ms": self._watermark,
            "records": [_encode(r) for r in self._records],
            "late": [_encode(r) for r in self._late],
        }

    @classmethod
    def restore(cls, config: WindowConfig, snapshot: dict[str, Any]) -> Windower:
        """A windower that continues from `snapshot`, which must come from the same windows."""
        windower = cls(config)
        if snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unknown window snapshot version {snapshot.get('version')!r}")
        # Records kept for other windows would be assigned wrongly: refuse rather than guess.
        shape = ["kind", "length", "slide"] + (["timestamp"] if config.kind == "time" else [])
        for name in shape:
            if snapshot[name] != getattr(config, name):
                raise ValueError(
                    f"window snapshot has {name}={snapshot[name]!r}, "
                    f"the configuration {getattr(config, name)!r}"
                )
        windower._next_sequence = snapshot["next_sequence"]
        windower._added = snapshot["added"]
        windower._watermark = snapshot["watermark_ms"]
        windower._records = deque(_decode(r) for r in snapshot["records"])
        windower._late = [_decode(r) for r in snapshot["late"]]
        return windower


def _encode(record: WindowRecord) -> dict[str, Any]:
    if isinstance(record.value, bytes):
        value = {"type": "bytes", "data": base64.b64encode(record.value).decode("ascii")}
    else:
        value = {"type": "str", "data": record.value}
    return {
        "value": value,
        "message_id": record.message_id,
        "topic": record.topic,
        "timestamp_ms": record.timestamp_ms,
        "event_time_ms": record.event_time_ms,
        "key": record.key,
        "properties": dict(record.properties),
    }


def _decode(data: dict[str, Any]) -> WindowRecord:
    kind, payload = data["value"]["type"], data["value"]["data"]
    if kind == "bytes":
        value: str | bytes = base64.b64decode(payload)
    elif kind == "str":
        value = payload
    else:
        raise ValueError(f"unknown record value type {kind!r} in window snapshot")
    return WindowRecord(
        value=value,
        message_id=data["message_id"],
        topic=data["topic"],
        timestamp_ms=data["timestamp_ms"],
        event_time_ms=data["event_time_ms"],
        key=data["key"],
        properties=dict(data["properties"]),
    )
