"""The window assigner for windowed Pulsar Functions: flags, count and time windows, lateness,
the clock, and snapshot/restore against an uninterrupted run and a brute-force model."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlplatform.inference.stream.function_windows import (
    Window,
    WindowConfig,
    Windower,
    WindowRecord,
)

pytestmark = pytest.mark.unit


def rec(i: int, t: int = 0, value: str | bytes | None = None) -> WindowRecord:
    return WindowRecord(
        value=f"v{i}" if value is None else value,
        message_id=f"m{i}",
        topic="persistent://public/default/in",
        timestamp_ms=t,
        event_time_ms=t,
        key=f"k{i % 3}",
        properties={"i": str(i)},
    )


def ids(window: Window) -> list[str]:
    return [r.message_id for r in window.records]


def shape(windows: list[Window]) -> list[tuple[int, int, int, list[str]]]:
    return [(w.sequence, w.start, w.end, ids(w)) for w in windows]


# --- flags ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({}, "exactly one of --window-length-count and --window-length-duration-ms"),
        (
            {"window_length_count": 3, "window_length_duration_ms": 10},
            "exactly one of --window-length-count and --window-length-duration-ms",
        ),
        ({"window_length_count": 0}, "--window-length-count must be > 0"),
        ({"window_length_count": True}, "--window-length-count must be an integer"),
        ({"window_length_duration_ms": -5}, "--window-length-duration-ms must be > 0"),
        (
            {"window_length_count": 5, "sliding_interval_count": 0},
            "--sliding-interval-count must be > 0",
        ),
        (
            {"window_length_duration_ms": 5, "sliding_interval_duration_ms": -1},
            "--sliding-interval-duration-ms must be > 0",
        ),
        (
            {"window_length_count": 5, "sliding_interval_count": 6},
            "--sliding-interval-count must be <= --window-length-count",
        ),
        (
            {"window_length_duration_ms": 100, "sliding_interval_duration_ms": 200},
            "--sliding-interval-duration-ms must be <= --window-length-duration-ms",
        ),
        (
            {"window_length_count": 5, "sliding_interval_duration_ms": 1},
            "--sliding-interval-duration-ms needs --window-length-duration-ms",
        ),
        (
            {"window_length_duration_ms": 5, "sliding_interval_count": 1},
            "--sliding-interval-count needs --window-length-count",
        ),
        ({"window_length_duration_ms": 5, "timestamp": "ingest"}, "--timestamp must be"),
        ({"window_length_count": 5, "timestamp": "ingest"}, "--timestamp must be"),
        ({"window_length_duration_ms": 5, "max_lag_ms": -1}, "--max-lag-ms must be >= 0"),
    ],
)
def test_bad_flags_are_named(flags: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WindowConfig(**flags).validate()
    with pytest.raises(ValueError, match=message):
        Windower(WindowConfig(**flags))


def test_resolved_kind_length_and_slide() -> None:
    tumbling = WindowConfig(window_length_count=4)
    sliding = WindowConfig(window_length_duration_ms=60_000, sliding_interval_duration_ms=10_000)
    tumbling.validate()
    sliding.validate()
    assert (tumbling.kind, tumbling.length, tumbling.slide) == ("count", 4, 4)
    assert (sliding.kind, sliding.length, sliding.slide) == ("time", 60_000, 10_000)


# --- count windows -------------------------------------------------------------------------


@settings(deadline=None)
@given(length=st.integers(1, 6), n=st.integers(0, 40))
def test_tumbling_count_windows_partition_the_stream(length: int, n: int) -> None:
    w = Windower(WindowConfig(window_length_count=length))
    out: list[Window] = []
    for i in range(n):
        closed = w.add(rec(i))
        # A window closes exactly on every `length`-th arrival.
        assert len(closed) == (1 if (i + 1) % length == 0 else 0)
        out += closed
    full = n // length
    chunks = [range(j * length, (j + 1) * length) for j in range(full)]
    assert shape(out) == [
        (j + 1, c.start, c.stop, [f"m{i}" for i in c]) for j, c in enumerate(chunks)
    ]
    assert w.watermark_ms is None and w.advance(10**12) == [] and w.take_late() == []
    # Only the records of the window still being filled are kept.
    assert [r["message_id"] for r in w.snapshot()["records"]] == [
        f"m{i}" for i in range(full * length, n)
    ]


def test_sliding_count_window_contents() -> None:
    w = Windower(WindowConfig(window_length_count=3, sliding_interval_count=2))
    out = [w.add(rec(i)) for i in range(7)]
    assert [shape(o) for o in out] == [
        [],
        [(1, 0, 2, ["m0", "m1"])],  # the first window holds fewer than the length
        [],
        [(2, 1, 4, ["m1", "m2", "m3"])],
        [],
        [(3, 3, 6, ["m3", "m4", "m5"])],
        [],
    ]
    # m5 and m6 are all the next window ([5, 8)) needs.
    assert [r["message_id"] for r in w.snapshot()["records"]] == ["m5", "m6"]
    assert shape(w.add(rec(7))) == [(4, 5, 8, ["m5", "m6", "m7"])]


@settings(deadline=None)
@given(length=st.integers(1, 7), data=st.data())
def test_sliding_count_windows_are_the_last_length_records(length: int, data) -> None:
    slide = data.draw(st.integers(1, length))
    n = data.draw(st.integers(0, 40))
    w = Windower(WindowConfig(window_length_count=length, sliding_interval_count=slide))
    out = [win for i in range(n) for win in w.add(rec(i))]
    ends = range(slide, n + 1, slide)
    assert [(w.start, w.end, ids(w)) for w in out] == [
        (max(0, e - length), e, [f"m{i}" for i in range(max(0, e - length), e)]) for e in ends
    ]
    assert [w.sequence for w in out] == list(range(1, len(out) + 1))


# --- time windows --------------------------------------------------------------------------

timestamps = st.lists(st.integers(0, 300), min_size=1, max_size=40)


@settings(deadline=None)
@given(length=st.integers(1, 50), lag=st.integers(0, 60), ts=timestamps)
def test_time_tumbling_puts_each_record_in_one_window_holding_it(
    length: int, lag: int, ts: list[int]
) -> None:
    w = Windower(WindowConfig(window_length_duration_ms=length, max_lag_ms=lag, timestamp="event"))
    out: list[Window] = []
    late: list[str] = []
    for i, t in enumerate(ts):
        before = w.watermark_ms
        out += w.add(rec(i, t))
        if w.take_late():
            # Late only when its one window, [t - t % length, ...), had already closed.
            assert before is not None and t - t % length + length <= before
            late.append(f"m{i}")
    # A record far ahead closes every window the others are in (and stays open itself).
    out += w.add(rec(len(ts), 10**9))
    seen = [m for win in out for m in ids(win)]
    assert sorted(seen + late) == sorted(f"m{i}" for i in range(len(ts)))
    assert len(set(seen)) == len(seen)
    for win in out:
        assert win.end - win.start == length and win.start % length == 0
        assert all(win.start <= r.timestamp_ms < win.end for r in win.records)
        assert win.records  # empty windows are never emitted
    assert [(win.end, win.start) for win in out] == sorted((win.end, win.start) for win in out)


@settings(deadline=None)
@given(slide=st.integers(1, 20), per=st.integers(1, 5), ts=timestamps)
def test_sliding_time_puts_each_record_in_every_open_window_holding_it(
    slide: int, per: int, ts: list[int]
) -> None:
    length = slide * per
    w = Windower(WindowConfig(window_length_duration_ms=length, sliding_interval_duration_ms=slide))
    out: list[Window] = []
    expected: dict[str, int] = {}
    for i, t in enumerate(ts):
        before = w.watermark_ms
        out += w.add(rec(i, t))
        # The windows holding t start at t - t % slide, and `per` - 1 slides before that.
        starts = [t - t % slide - j * slide for j in range(per)]
        expected[f"m{i}"] = sum(1 for s in starts if before is None or s + length > before)
    out += w.advance(10**9)
    late = {r.message_id for r in w.take_late()}
    assert late == {m for m, n in expected.items() if n == 0}
    counts = {m: 0 for m in expected}
    for win in out:
        assert all(win.start <= r.timestamp_ms < win.end for r in win.records)
        for m in ids(win):
            counts[m] += 1
    assert counts == expected
    if ts == sorted(ts):  # nothing can be late: every record is in exactly `per` windows
        assert set(counts.values()) == {per}
    assert w.snapshot()["records"] == []  # all windows closed: nothing is kept


def test_late_and_partly_late_records() -> None:
    w = Windower(
        WindowConfig(
            window_length_duration_ms=20, sliding_interval_duration_ms=10, timestamp="event"
        )
    )
    assert w.add(rec(0, 5)) == []
    assert shape(w.add(rec(1, 15))) == [(1, -10, 10, ["m0"])]
    # [-10, 10) has closed, [0, 20) has not: m2 joins only the open one.
    assert w.add(rec(2, 3)) == []
    assert w.take_late() == []
    assert shape(w.add(rec(3, 25))) == [(2, 0, 20, ["m0", "m1", "m2"])]  # arrival order
    assert w.add(rec(4, 8)) == []  # both its windows have closed
    assert w.add(rec(5, 2)) == []
    assert [r.message_id for r in w.take_late()] == ["m4", "m5"]
    assert w.take_late() == []
    assert shape(w.add(rec(6, 30))) == [(3, 10, 30, ["m1", "m3"])]


def test_publish_time_windows_close_by_the_clock() -> None:
    w = Windower(WindowConfig(window_length_duration_ms=100, max_lag_ms=20))
    assert w.add(rec(0, 10)) == [] and w.add(rec(1, 50)) == []
    assert w.watermark_ms == 30
    assert w.advance(119) == [] and w.watermark_ms == 99
    assert shape(w.advance(120)) == [(1, 0, 100, ["m0", "m1"])]
    # Its window [0, 100) ended exactly at the watermark (100): closed, so the record is late.
    assert w.add(rec(9, 99)) == [] and [r.message_id for r in w.take_late()] == ["m9"]
    assert w.advance(60) == [] and w.watermark_ms == 100  # never backwards
    assert w.advance(10_000) == []  # empty windows are not emitted
    assert w.add(rec(2, 9_950)) == [] and w.add(rec(3, 1_000)) == []
    assert [r.message_id for r in w.take_late()] == ["m3"]
    assert shape(w.advance(10_020)) == [(2, 9_900, 10_000, ["m2"])]


def test_event_time_windows_ignore_the_clock() -> None:
    w = Windower(WindowConfig(window_length_duration_ms=100, timestamp="event"))
    assert w.add(rec(0, 10)) == []
    assert w.advance(10**12) == [] and w.watermark_ms == 10
    assert shape(w.add(rec(1, 100))) == [(1, 0, 100, ["m0"])]


# --- snapshot / restore --------------------------------------------------------------------

values = st.one_of(st.text(max_size=5), st.binary(max_size=5))
add_op = st.tuples(st.just("add"), st.integers(0, 400), values)
advance_op = st.tuples(st.just("advance"), st.integers(0, 500), st.none())
ops_strategy = st.lists(st.one_of(add_op, add_op, advance_op), max_size=50)


@st.composite
def time_configs(draw) -> WindowConfig:
    length = draw(st.integers(1, 60))
    slide = draw(st.integers(1, length))
    return WindowConfig(
        window_length_duration_ms=length,
        sliding_interval_duration_ms=slide,
        max_lag_ms=draw(st.integers(0, 50)),
        timestamp=draw(st.sampled_from(["publish", "event"])),
    )


@st.composite
def count_configs(draw) -> WindowConfig:
    length = draw(st.integers(1, 7))
    slide = draw(st.one_of(st.none(), st.integers(1, length)))  # None: tumbling
    return WindowConfig(window_length_count=length, sliding_interval_count=slide)


def run(
    w: Windower, ops: list, first: int, drain: bool = True
) -> tuple[list[Window], list[WindowRecord]]:
    windows: list[Window] = []
    late: list[WindowRecord] = []
    for i, (op, t, value) in enumerate(ops, start=first):
        windows += w.add(rec(i, t, value)) if op == "add" else w.advance(t)
        if drain:
            late += w.take_late()
    return windows, late


@settings(deadline=None, max_examples=300)
@given(config=st.one_of(time_configs(), count_configs()), ops=ops_strategy, data=st.data())
def test_snapshot_and_restore_continue_exactly(config: WindowConfig, ops: list, data) -> None:
    cut = data.draw(st.integers(0, len(ops)))
    whole, whole_late = run(Windower(config), ops, 0)

    before = Windower(config)
    # Late records are not taken before the snapshot: they must travel in it.
    first, _ = run(before, ops[:cut], 0, drain=False)
    after = Windower.restore(config, json.loads(json.dumps(before.snapshot())))
    carried = after.take_late()
    second, second_late = run(after, ops[cut:], cut)
    assert shape(first + second) == shape(whole)
    assert first + second == whole
    assert carried + second_late == whole_late
    assert [w.sequence for w in whole] == list(range(1, len(whole) + 1))
    # Values keep their type (str or bytes) through JSON.
    for win in first + second:
        for r in win.records:
            assert r.value == ops[int(r.message_id[1:])][2]


def model(config: WindowConfig, ops: list) -> tuple[list[tuple], list[str]]:
    """A brute-force model: every window is a list that records join while it is open."""
    length, slide = config.length, config.slide
    out: list[tuple] = []
    late: list[str] = []
    if config.kind == "count":
        seen = [f"m{i}" for i, (op, _, _) in enumerate(ops) if op == "add"]
        for n in range(slide, len(seen) + 1, slide):
            out.append((max(0, n - length), n, seen[max(0, n - length) : n]))
        return out, late
    wm: int | None = None
    open_windows: dict[int, list[str]] = {}  # start -> message ids
    closed: set[int] = set()

    def close() -> None:
        for start in sorted(open_windows):
            if wm is not None and start + length <= wm:
                out.append((start, start + length, open_windows.pop(start)))
                closed.add(start)

    for i, (op, t, _) in enumerate(ops):
        if op == "add":
            holding = [s for s in range(t - length - slide, t + 1) if s % slide == 0]
            holding = [s for s in holding if s <= t < s + length]
            live = [s for s in holding if s not in closed and (wm is None or s + length > wm)]
            if not live:
                late.append(f"m{i}")
                continue
            for s in live:
                open_windows.setdefault(s, []).append(f"m{i}")
            target = t - config.max_lag_ms
        elif config.timestamp == "publish":
            target = t - config.max_lag_ms
        else:
            continue
        wm = target if wm is None else max(wm, target)
        close()
    return out, late


@settings(deadline=None, max_examples=300)
@given(config=st.one_of(time_configs(), count_configs()), ops=ops_strategy)
def test_windows_match_a_brute_force_model(config: WindowConfig, ops: list) -> None:
    windows, late = run(Windower(config), ops, 0)
    expected, expected_late = model(config, ops)
    assert [(w.start, w.end, ids(w)) for w in windows] == expected
    assert [r.message_id for r in late] == expected_late


def test_restore_refuses_other_windows_and_keeps_bytes() -> None:
    config = WindowConfig(window_length_duration_ms=10, timestamp="event")
    w = Windower(config)
    w.add(rec(0, 1, b"\x00\xff"))
    w.add(rec(1, 2, "text"))
    stored = json.loads(json.dumps(w.snapshot()))
    restored = Windower.restore(config, stored)
    assert shape(restored.add(rec(2, 10))) == [(1, 0, 10, ["m0", "m1"])]
    assert restored.snapshot()["records"][0]["value"] == {"type": "str", "data": "v2"}
    closed = Windower.restore(config, stored).add(rec(2, 10))[0]
    assert [r.value for r in closed.records] == [b"\x00\xff", "text"]
    assert closed.records[0] == rec(0, 1, b"\x00\xff")
    for other in (
        WindowConfig(window_length_duration_ms=20, timestamp="event"),
        WindowConfig(window_length_duration_ms=10, timestamp="publish"),
        WindowConfig(window_length_count=10),
    ):
        with pytest.raises(ValueError, match="window snapshot has"):
            Windower.restore(other, stored)
    with pytest.raises(ValueError, match="version"):
        Windower.restore(config, {**stored, "version": 99})
