"""Property-based raw lines (Hypothesis) through the real Flink preprocessing job: valid rows,
near-valid rows with one defect each (wrong field counts, non-numbers, NaN and Infinity text,
values outside the dataset spec's ranges, empty values, oversized lines, bytes that are not
UTF-8, duplicate event ids), JSON lines of the wrong types and shapes, and arbitrary bytes.

Each example is one CSV file and one JSON-lines file, run by one Flink job (about 30 s), with
tables and topics of its own. The property: every input line ends as exactly one features row
or one quarantine row (matched by event id and by the exact bytes the quarantine topic keeps),
the job's counts reconcile with both sinks, every quarantine row has a reason of the documented
form, and a line made with one known defect gets exactly that defect's reason.

Bounded: EXAMPLES Flink runs of at most MAX_CSV + MAX_JSON lines, no shrinking (a shrink step
is a Flink run); derandomized under CI=true so a failure there reproduces. The inputs tried are
printed as one line ("fuzz raw lines: ..."): see it with `pytest -rP` or `-s`.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from mlplatform.connectors.iceberg_tables import load_table
from mlplatform.connectors.pulsar_io import read_all
from mlplatform.preprocess.batch import preprocess
from mlplatform.sample_data.demo_rows import header
from mlplatform.settings import Settings
from tests.helpers import module_settings

pytestmark = pytest.mark.integration

EXAMPLES = 1  # a Flink run each (~30 s): many lines per run, few runs
MIN_CSV, MAX_CSV = 300, 600
MIN_JSON, MAX_JSON = 100, 240
MAX_LINE_BYTES = 256
WRITTEN = "written"  # the expected outcome of a valid line (or duplicate_key for a later copy)
ANY = None  # arbitrary input: any outcome, as long as it has exactly one
TRIED: Counter[str] = Counter()  # inputs tried, over every example of this module


@dataclass(frozen=True)
class Line:
    """One generated input line: its bytes, the event id it carries (None when it has none we
    know of) and the outcome it must get (WRITTEN, a quarantine reason, or ANY)."""

    raw: bytes
    key: str | None
    expected: str | None


# --- values ---------------------------------------------------------------------------------
# The spec's features and their ranges are read from the settings in each example; these
# strategies take the range as arguments.


def in_range(lo: float, hi: float) -> st.SearchStrategy[str]:
    """Text of a number in [lo, hi], in the forms a CSV writer gives (Java and Python read each
    to the same double)."""
    value = st.floats(lo, hi, allow_nan=False, allow_infinity=False)
    return st.one_of(
        value.map(repr),
        value.map(lambda x: f"{x:.3f}"),
        value.map(lambda x: f"{x:.2e}"),
        st.integers(math.ceil(lo), math.floor(hi)).map(str),
        value.map(lambda x: f" \t{x!r} "),  # blanks around a value are cut
    ).filter(lambda text: lo <= float(text) <= hi)


def out_of_range(lo: float, hi: float) -> st.SearchStrategy[str]:
    below = st.floats(max_value=lo, exclude_max=True, allow_nan=False, allow_infinity=False)
    above = st.floats(min_value=hi, exclude_min=True, allow_nan=False, allow_infinity=False)
    return st.one_of(below, above).map(repr)


NOT_FINITE = st.sampled_from(["NaN", "Infinity", "-Infinity", "+Infinity", "1e999", "-2e400"])
# Text no number parser reads: Java's Double.parseDouble also takes "1d", "0x1p3" and "Infinity".
NOT_A_NUMBER = st.one_of(
    st.from_regex(r"\A[a-ce-zA-CE-HJ-MO-Z_][a-zA-Z_ ]{0,10}\Z").map(str.strip).filter(bool),
    st.sampled_from(["1.2.3", "--1", "1e", "e5", "1-", ".", "5..0", "1 2", "#", "½", "٣"]),
)
NOT_UTF8 = st.sampled_from([b"\xff", b"\xfe\xff", b"\xc3(", b"\x80", b"\xed\xa0\x80", b"\xc0\x80"])
BLANK_LINE = st.text(alphabet=" \t", min_size=0, max_size=3)
# Blanks around a field's value are cut (spaces and tabs): a blank field is a missing one.
BLANK = st.text(alphabet=" \t", min_size=0, max_size=3)


CSV_DEFECTS = [None, "empty", "oversized", "not_utf8", "missing", "extra", "no_key", "no_value"]
CSV_DEFECTS += ["not_a_number", "not_finite", "out_of_range", "label"]


@st.composite
def csv_line(draw: st.DrawFn, s: Settings, key: str, defect: str | None) -> Line:
    """A CSV row with event id `key`: valid, or with exactly one defect (and its reason)."""
    features = s.dataset_spec.features
    n_labels = len(s.label_names)
    values = [draw(in_range(f.min, f.max)) for f in features]
    values.append(str(draw(st.integers(0, n_labels - 1))))
    fields, expected = [key, *values], WRITTEN
    columns = [s.key_column, *s.feature_columns, s.label_column]
    j = draw(st.integers(1, len(features)))  # a feature column's position
    name = columns[j]
    if defect == "empty":
        return Line(draw(BLANK_LINE).encode(), None, "empty_payload")
    if defect == "oversized":
        padding = "9" * (MAX_LINE_BYTES + draw(st.integers(1, 500)))
        return Line(",".join([key, padding, *values[1:]]).encode(), key, "oversized_payload")
    if defect == "not_utf8":
        text = ",".join(fields).encode()
        at = text.index(b",") + 1  # within the first feature, so the key stays readable
        return Line(text[:at] + draw(NOT_UTF8) + text[at:], key, "not_utf8")
    if defect == "missing":
        fields.pop(draw(st.integers(1, len(fields) - 1)))
        expected = "missing_fields"
    elif defect == "extra":
        fields.insert(draw(st.integers(1, len(fields))), draw(in_range(0, 1)))
        expected = "extra_fields"
    elif defect == "no_key":
        return Line(",".join([draw(BLANK), *values]).encode(), None, f"missing_key:{columns[0]}")
    elif defect == "no_value":
        j = draw(st.integers(1, len(columns) - 1))
        fields[j], expected = draw(BLANK), f"missing_value:{columns[j]}"
    elif defect == "not_a_number":
        fields[j], expected = draw(NOT_A_NUMBER), f"not_a_number:{name}"
    elif defect == "not_finite":
        fields[j], expected = draw(NOT_FINITE), f"not_finite:{name}"
    elif defect == "out_of_range":
        fields[j], expected = (
            draw(out_of_range(features[j - 1].min, features[j - 1].max)),
            (f"out_of_range:{name}"),
        )
    elif defect == "label":
        fields[-1], reason = draw(
            st.sampled_from(
                [
                    (str(n_labels), "out_of_range"),
                    ("-1", "out_of_range"),
                    ("99999999999", "not_an_integer"),  # digits, but beyond an int
                    ("1.5", "not_an_integer"),
                    ("1e0", "not_an_integer"),
                    ("setosa", "not_an_integer"),
                    ("NaN", "not_an_integer"),
                ]
            )
        )
        expected = f"{reason}:{columns[-1]}"
    return Line(",".join(fields).encode(), key, expected)


JSON_DEFECTS = [None, "missing", "extra", "string", "bool", "object", "null", "nan_text"]
JSON_DEFECTS += ["out_of_range", "label", "not_json"]


@st.composite
def json_line(draw: st.DrawFn, s: Settings, key: str, defect: str | None) -> Line:
    """A JSON-lines row with event id `key`: valid, or with one defect of JSON's own."""
    features = s.dataset_spec.features
    row: dict[str, object] = {s.key_column: key}
    for f in features:
        row[f.name] = draw(st.floats(f.min, f.max, allow_nan=False, allow_infinity=False))
    row[s.label_column] = draw(st.integers(0, len(s.label_names) - 1))
    name = draw(st.sampled_from(s.feature_columns))
    expected = WRITTEN
    if defect == "missing":
        del row[name]
        expected = "missing_fields"
    elif defect == "extra":
        row["colour"] = draw(st.sampled_from(["red", 1, None]))
        expected = "extra_fields"
    elif defect == "string":  # a number written as a string
        row[name], expected = str(row[name]), f"wrong_type:{name}"
    elif defect == "bool":
        row[name], expected = draw(st.booleans()), f"wrong_type:{name}"
    elif defect == "object":
        row[name] = draw(st.sampled_from([{"cm": 1.0}, [1.0], []]))
        expected = f"wrong_type:{name}"
    elif defect == "null":
        row[name], expected = None, f"missing_value:{name}"
    elif defect == "nan_text":
        row[name], expected = draw(st.sampled_from(["NaN", "Infinity"])), f"not_finite:{name}"
    elif defect == "out_of_range":
        spec = next(f for f in features if f.name == name)
        row[name] = float(draw(out_of_range(spec.min, spec.max)))
        expected = f"out_of_range:{name}"
    elif defect == "label":
        row[s.label_column] = draw(st.sampled_from([1.5, len(s.label_names), -1]))
        kind = "not_an_integer" if row[s.label_column] == 1.5 else "out_of_range"
        expected = f"{kind}:{s.label_column}"
    elif defect == "not_json":
        text = json.dumps(row)
        cut = draw(st.sampled_from([text[: len(text) // 2], "[1, 2]", "42", '"text"', "nul"]))
        return Line(cut.encode(), None, "not_json")
    return Line(json.dumps(row).encode(), key, expected)


# Arbitrary bytes and text: no line break (the raw format splits lines on it).
ARBITRARY = st.one_of(
    st.binary(min_size=1, max_size=80),
    st.text(min_size=1, max_size=80).map(str.encode),
    st.lists(st.text(max_size=8), min_size=1, max_size=9).map(",".join).map(str.encode),
).map(lambda raw: raw.replace(b"\n", b" ").replace(b"\r", b" "))


@st.composite
def lines_of(
    draw: st.DrawFn,
    s: Settings,
    make: Callable[[Settings, str, str | None], st.SearchStrategy[Line]],
    defects: list[str | None],
    prefix: str,
    sizes: tuple[int, int],
) -> list[Line]:
    """Lines with fresh event ids, each kind at least once (so even Hypothesis's simplest
    example covers them all) in a drawn order, then more of kinds drawn at random: valid, one
    defect, a copy of an earlier valid line's id (duplicate_key), or arbitrary bytes."""
    kinds = [*defects, "duplicate", "arbitrary"]
    every = draw(st.permutations(kinds + [None] * len(kinds)))  # half valid: duplicates need some
    n = max(draw(st.integers(*sizes)) - len(every), 0)
    lines: list[Line] = []
    for i, kind in enumerate(
        every + draw(st.lists(st.sampled_from(kinds), min_size=n, max_size=n))
    ):
        if kind == "arbitrary":
            lines.append(Line(draw(ARBITRARY), None, ANY))
            continue
        key = f"{prefix}{i}"
        valid = [line.key for line in lines if line.expected == WRITTEN]
        if kind == "duplicate":
            key = draw(st.sampled_from(valid)) if valid else key
            kind = None
        lines.append(draw(make(s, key, kind)))
    return lines


# --- the property ---------------------------------------------------------------------------

REASON = re.compile(
    r"^(empty_payload|oversized_payload|not_utf8|not_json|missing_fields|extra_fields"
    r"|duplicate_key|(missing_key|missing_value|wrong_type|not_a_number|not_an_integer"
    r"|not_finite|out_of_range):[A-Za-z_][A-Za-z0-9_]*)$"
)


def _key_of(raw: bytes, s: Settings) -> str | None:
    """The event id the job reads from a line (None when it reads none)."""
    text = raw.decode("utf-8", errors="replace")
    try:
        row = json.loads(text)
    except ValueError:
        return text.split(",")[0].strip(" ")  # as the job's TRIM
    return str(row.get(s.key_column)) if isinstance(row, dict) else None


def check_every_line_has_one_outcome(s: Settings, lines: list[Line], result: object) -> None:
    features = load_table(s, s.features_table).scan().to_pandas()
    quarantined = [json.loads(m.data()) for m in read_all(s, s.quarantine_topic)]
    table = load_table(s, s.quarantine_table).scan().to_pandas()
    # The job's counts reconcile with both sinks and with the input.
    assert result.rows_read == len(lines), (result, len(lines))
    assert result.already_ingested == 0
    assert result.features_rows == len(features) == len(lines) - len(quarantined)
    assert result.quarantined_rows == len(quarantined) == len(table)
    by_reason = Counter(q["reason"] for q in quarantined)
    assert result.quarantined_by_reason == dict(sorted(by_reason.items()))
    assert Counter(table["reason"]) == by_reason
    bad = [r for r in by_reason if not REASON.match(r or "")]
    assert not bad, f"quarantine reasons of no documented form: {bad}"

    # Each quarantined row is one input line: its exact bytes, or an oversized line's start.
    left = Counter(line.raw for line in lines)
    reasons_of: dict[bytes, Counter[str]] = {}
    for q in quarantined:
        if q["raw_base64"] is not None:
            raw = base64.b64decode(q["raw_base64"])
        else:
            assert q["reason"] == "oversized_payload", q
            shows = [line.raw for line in lines if _oversized_shows(line.raw, q["raw"])]
            raw = next((r for r in shows if left[r] > 0), b"(no oversized line shows this)")
        assert left[raw] > 0, f"a quarantine row matches no input line left: {raw[:80]!r}"
        left[raw] -= 1
        reasons_of.setdefault(raw, Counter())[q["reason"]] += 1

    # The lines left are the features rows: one per event id, each id once.
    written = [raw for raw, n in left.items() for _ in range(n)]
    keys = [_key_of(raw, s) for raw in written]
    unexplained = Counter(keys) - Counter(features[s.key_column])
    unwritten = Counter(features[s.key_column]) - Counter(keys)
    lost = [raw for raw in written if _key_of(raw, s) in unexplained]
    assert not unexplained and not unwritten, (
        f"lines neither quarantined nor written: {lost}; features rows of no line: {unwritten}"
    )
    assert len(set(keys)) == len(keys)

    # A line made with one known defect got that defect's reason; a valid one was written,
    # unless an earlier valid line had its event id (then it is a duplicate_key).
    valid_by_key: dict[str, int] = Counter(line.key for line in lines if line.expected == WRITTEN)
    for line in lines:
        if line.expected in (ANY, WRITTEN):
            continue
        assert line.expected in reasons_of.get(line.raw, {}), (line, reasons_of.get(line.raw))
    for key, copies in valid_by_key.items():
        outcomes = [r for line in lines if line.key == key for r in reasons_of.get(line.raw, {})]
        assert key in set(keys), f"no valid line with event id {key} was written"
        assert outcomes.count("duplicate_key") >= copies - 1, (key, outcomes)
    values = features.set_index(s.key_column)
    for line in lines:
        # A CSV line's values, as the features table has them (Java and Python parse alike).
        if line.expected == WRITTEN and valid_by_key[line.key] == 1 and line.raw[:1] != b"{":
            got = [values.loc[line.key, c] for c in s.feature_columns]
            assert got == [float(v) for v in line.raw.decode().split(",")[1:-1]], (line, got)


def _oversized_shows(raw: bytes, shown: str) -> bool:
    limit = MAX_LINE_BYTES
    return len(raw) > limit and raw.decode("utf-8", errors="replace")[:limit] == shown


@pytest.fixture(scope="module")
def spec_settings(isolated: Settings) -> Settings:
    return module_settings(isolated, "fuzzlines", max_line_bytes=MAX_LINE_BYTES)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # a shrink step would be another Flink run
    derandomize=os.environ.get("CI") == "true",
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_every_raw_line_is_one_features_or_quarantine_row(
    spec_settings: Settings, data: st.DataObject
) -> None:
    s = module_settings(spec_settings, f"ex{TRIED['runs']}", max_line_bytes=MAX_LINE_BYTES)
    csv = data.draw(lines_of(s, csv_line, CSV_DEFECTS, "c", (MIN_CSV, MAX_CSV)), label="csv")
    jsonl = data.draw(lines_of(s, json_line, JSON_DEFECTS, "j", (MIN_JSON, MAX_JSON)), label="json")
    csv = [line for line in csv if line.raw.decode(errors="replace") != header(s)]
    s.resolved_landing_dir.mkdir(parents=True, exist_ok=True)
    text = b"\n".join([header(s).encode(), *(line.raw for line in csv)]) + b"\n"
    (s.resolved_landing_dir / "fuzz.csv").write_bytes(text)
    (s.resolved_landing_dir / "fuzz.jsonl").write_bytes(b"".join(j.raw + b"\n" for j in jsonl))
    result = preprocess(s, run_id=f"fuzz-{TRIED['runs']}")
    TRIED.update(runs=1, csv=len(csv), json=len(jsonl))
    TRIED.update(written=result.features_rows, quarantined=result.quarantined_rows)
    TRIED.update(made_bad=sum(line.expected not in (WRITTEN, ANY) for line in csv + jsonl))
    TRIED.update(arbitrary=sum(line.expected is ANY for line in csv + jsonl))
    check_every_line_has_one_outcome(s, csv + jsonl, result)
    print(  # cumulative: the last one printed is the module's total
        f"fuzz raw lines: {TRIED['csv'] + TRIED['json']} lines tried ({TRIED['csv']} CSV, "
        f"{TRIED['json']} JSON lines; {TRIED['made_bad']} with one known defect, "
        f"{TRIED['arbitrary']} arbitrary) in {TRIED['runs']} Flink runs: {TRIED['written']} "
        f"written, {TRIED['quarantined']} quarantined"
    )
