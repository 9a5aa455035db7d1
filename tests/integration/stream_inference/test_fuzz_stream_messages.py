"""Malformed feature messages (Hypothesis) to a real stream consumer pool: empty payloads, random
bytes, ~1 MB payloads, JSON of the wrong shape, wrong types, a missing key or feature, NaN and
overflowing numbers, interleaved with valid rows and followed by more. Every bad message lands
on the dead-letter topic with its exact bytes and a `reason` property (the expected reason
where the defect is known), every valid row gets exactly one prediction (the model's own
answer for its features), and the valid rows after the bad ones are predicted: the stream goes
on.

Each example publishes to topics of its own and runs the pool for RUN_S seconds (bad messages
are retried stream_max_redeliveries times before they are parked). Bounded: EXAMPLES runs, no
shrinking, derandomized under CI=true. The messages tried are printed as one line
("fuzz stream messages: ..."): see it with `pytest -rP` or `-s`.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sklearn.tree import DecisionTreeClassifier

from mlplatform.connectors.pulsar_io import ensure_partitioned_topic, make_client, read_all
from mlplatform.inference.stream.runner import run_stream_inference
from mlplatform.settings import Settings
from tests.helpers import module_settings
from tests.integration.small_champion import register_small_champion

pytestmark = pytest.mark.integration

EXAMPLES = 1
RUN_S = 15.0
HUGE = 1_000_000
GOOD = "good"
ANY = None  # refused for a reason not known in advance
# Outside the dataset spec's range: refused as out_of_range once the parser checks ranges, else
# predicted; either way once, and the stream goes on (1e39 and beyond do not fit a float32,
# which tree models compute in).
OUT_OF_RANGE = "out_of_range"
TRIED: Counter[str] = Counter()


@dataclass(frozen=True)
class Message:
    payload: bytes
    expected: str | None  # GOOD, a reason code (the part before ':'), or ANY
    key: str | None = None  # a good message's event id
    features: tuple[float, ...] = ()


@pytest.fixture(scope="module")
def pool(isolated: Settings) -> tuple[Settings, DecisionTreeClassifier]:
    """Settings of this module's own (one actor, quick redeliveries) and the champion's model."""
    s = module_settings(
        isolated,
        "fuzzstream",
        stream_actors=1,
        stream_batch_max=50,
        stream_nack_delay_ms=200,
        stream_commit_interval_s=0.5,
    )
    return s, register_small_champion(s)


def _row(s: Settings, key: str, values: list[object]) -> dict[str, object]:
    return {s.key_column: key, **dict(zip(s.feature_columns, values, strict=True))}


FINITE = st.floats(0.0, 20.0, allow_nan=False, allow_infinity=False)
NOT_A_NUMBER = st.one_of(
    st.text(max_size=12),
    st.booleans(),
    st.none(),
    st.lists(FINITE, max_size=2),
    st.dictionaries(st.text(max_size=3), FINITE, max_size=2),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | FINITE | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@st.composite
def message(draw: st.DrawFn, s: Settings, key: str, kind: str) -> Message:
    """One message of a kind: good, or with one defect and the reason code it must get."""
    values: list[object] = [draw(FINITE) for _ in s.feature_columns]
    j = draw(st.integers(0, len(values) - 1))
    if kind == "good":
        row = _row(s, key, values)
        if draw(st.booleans()):  # fields beyond the features are allowed (label, source, ...)
            row |= {"label": draw(st.integers(0, 2)), draw(st.sampled_from(["src", "x"])): 1}
        return Message(json.dumps(row).encode(), GOOD, key, tuple(map(float, values)))
    if kind == "out_of_range":
        values[j] = draw(st.sampled_from([-1.0, 20.5, 1e6, 1e39, 1e300, -1e300]))
        row = _row(s, key, values)
        return Message(json.dumps(row).encode(), OUT_OF_RANGE, key, tuple(map(float, values)))
    if kind == "empty":
        return Message(b"", "not_json")
    if kind == "binary":
        return Message(draw(st.binary(min_size=1, max_size=300)), ANY)
    if kind == "not_utf8":
        text = json.dumps(_row(s, key, values)).encode()
        return Message(text[:5] + draw(st.sampled_from([b"\xff", b"\xc3(", b"\x80"])), "not_utf8")
    if kind == "huge":  # ~1 MB: a value of that size, or that much of a broken object
        if draw(st.booleans()):
            values[j] = "9" * HUGE
            return Message(json.dumps(_row(s, key, values)).encode(), "not_number")
        return Message(b'{"' + b"x" * HUGE, "not_json")
    if kind == "not_json":
        text = json.dumps(_row(s, key, values))
        return Message(text[: draw(st.integers(1, len(text) - 1))].encode(), "not_json")
    if kind == "not_object":
        value = draw(JSON_VALUES.filter(lambda v: not isinstance(v, dict)))
        return Message(json.dumps(value).encode(), "not_object")
    if kind == "wrong_schema":  # an object of other keys
        other = draw(st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=5))
        other.pop(s.key_column, None)
        return Message(json.dumps(other).encode(), "missing_key")
    if kind == "no_key":
        row = _row(s, key, values)
        no_key = draw(st.sampled_from([..., None, ""]))
        if no_key is ...:
            del row[s.key_column]
        else:
            row[s.key_column] = no_key
        return Message(json.dumps(row).encode(), "missing_key")
    if kind == "no_feature":
        row = _row(s, key, values)
        del row[s.feature_columns[j]]
        return Message(json.dumps(row).encode(), "missing_feature")
    if kind == "wrong_type":
        values[j] = draw(NOT_A_NUMBER)
        return Message(json.dumps(_row(s, key, values)).encode(), "not_number")
    if kind == "not_finite":
        value = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "9" * 400]))
        text = json.dumps(_row(s, key, values)).replace(
            f'"{s.feature_columns[j]}": {json.dumps(values[j])}',
            f'"{s.feature_columns[j]}": {value}',
        )
        return Message(text.encode(), "not_finite")
    raise AssertionError(kind)


BAD_KINDS = ["empty", "binary", "not_utf8", "huge", "not_json", "not_object", "wrong_schema"]
BAD_KINDS += ["no_key", "no_feature", "wrong_type", "not_finite", "out_of_range"]


@st.composite
def messages(draw: st.DrawFn, s: Settings, prefix: str) -> tuple[list[Message], list[Message]]:
    """Every bad kind at least once and more drawn, interleaved with good rows; then good rows
    that come after all the bad ones."""
    kinds = draw(st.permutations(BAD_KINDS + ["good"] * len(BAD_KINDS)))
    more = st.sampled_from([*BAD_KINDS, "good", "good"])
    kinds += draw(st.lists(more, min_size=50, max_size=120))
    mixed = [draw(message(s, f"{prefix}-{i}", kind)) for i, kind in enumerate(kinds)]
    n_after = draw(st.integers(6, 40))
    after = [draw(message(s, f"{prefix}-after-{i}", "good")) for i in range(n_after)]
    return mixed, after


def publish(s: Settings, sent: list[Message]) -> None:
    ensure_partitioned_topic(s, s.features_topic, s.features_topic_partitions)
    client = make_client(s)
    try:
        producer = client.create_producer(
            s.features_topic, batching_enabled=False, block_if_queue_full=True
        )
        for m in sent:  # keyed by event id; a bad one by its position
            producer.send(m.payload, partition_key=m.key or uuid.uuid4().hex)
    finally:
        client.close()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # a shrink step would be another stream run
    derandomize=os.environ.get("CI") == "true",
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(data=st.data())
def test_bad_messages_are_dead_lettered_and_the_stream_goes_on(
    pool: tuple[Settings, DecisionTreeClassifier], data: st.DataObject
) -> None:
    base, model = pool
    tag = f"ex{TRIED['runs']}-{uuid.uuid4().hex[:6]}"
    s = base.model_copy(
        update={
            "features_topic": f"{base.features_topic}-{tag}",
            "predictions_topic": f"{base.predictions_topic}-{tag}",
            "dead_letter_topic": f"{base.dead_letter_topic}-{tag}",
            "stream_subscription": f"fuzz-{tag}",
            "stream_predictions_table": f"stream_predictions_{tag.replace('-', '_')}",
        }
    )
    mixed, after = data.draw(messages(s, tag), label="messages")
    sent = mixed + after
    publish(s, sent)
    result = run_stream_inference(s, timeout_s=RUN_S)
    parked = read_all(s, s.dead_letter_topic)
    out = [json.loads(m.data()) for m in read_all(s, s.predictions_topic)]
    refused = Counter(m.data() for m in parked)
    # Out of range: refused (then with that reason) or predicted, as the parser decides.
    ranged = [m for m in sent if m.expected == OUT_OF_RANGE]
    good = [m for m in sent if m.expected == GOOD or (m in ranged and m.payload not in refused)]
    bad = [m for m in sent if m not in good]
    TRIED.update(runs=1, messages=len(sent), bad=len(bad), good=len(good))
    TRIED.update(huge=sum(len(m.payload) >= HUGE for m in sent), out_of_range=len(ranged))

    # Every bad message is parked once, with its bytes and a reason (the known one, if known).
    assert refused == Counter(m.payload for m in bad)
    reasons: dict[bytes, set[str]] = {}
    for m in parked:
        reason = m.properties().get("reason", "")
        assert reason.strip(), f"dead letter without a reason: {m.data()[:80]!r}"
        reasons.setdefault(m.data(), set()).add(reason.split(":")[0])
        assert m.properties()["deliveries"] == str(s.stream_max_redeliveries)
    for m in bad:
        if m.expected is not ANY:
            assert m.expected in reasons[m.payload], (m.payload[:120], reasons[m.payload])

    # Every good message has exactly one prediction, the model's own; those after the bad too.
    keys = Counter(o[s.key_column] for o in out)
    assert keys == Counter(m.key for m in good), (keys, [m.key for m in good])
    by_key = {o[s.key_column]: o for o in out}
    for m in good:
        [expected] = model.predict([list(m.features)])
        assert by_key[m.key]["class_index"] == int(expected), (m.payload, by_key[m.key])
        assert by_key[m.key]["label"] == s.label_names[int(expected)]
        assert all(math.isfinite(p) for p in by_key[m.key]["probabilities"])
    assert result.published == len(good)
    # Each bad message was tried its deliveries before it was parked (a delivery in flight when
    # the run ends may be counted once more).
    assert result.failed >= len(bad) * s.stream_max_redeliveries
    print(  # cumulative: the last one printed is the module's total
        f"fuzz stream messages: {TRIED['messages']} messages tried ({TRIED['bad']} malformed, "
        f"{TRIED['huge']} of ~1 MB, {TRIED['out_of_range']} out of range; {TRIED['good']} "
        f"valid) in {TRIED['runs']} runs: "
        f"{TRIED['bad']} dead-lettered with a reason, {TRIED['good']} predicted once"
    )
