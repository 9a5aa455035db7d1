"""Pure parts of the Pulsar Functions benchmark: matching outputs to inputs, rates, latencies,
output checks, ratios and the printed table."""

from __future__ import annotations

import base64
import math

import pulsar
import pytest

from benchmarks.functions import (
    PULSAR,
    RAW,
    RAY,
    RUNTIME_BATCH,
    drain_figures,
    id_key,
    input_key,
    latency_figures,
    parse_args,
    payloads,
    ratios,
    table_rows,
    wrong_outputs,
)
from mlplatform.inference.stream.function_context import SERDE

pytestmark = pytest.mark.unit


def test_an_outputs_input_id_matches_the_producers_receipt() -> None:
    receipt = pulsar.MessageId(-1, 12, 34, -1)  # as a producer's callback gets it, unbatched
    consumed = pulsar.MessageId(0, 12, 34, 0)  # as a consumer may see the same entry
    encoded = base64.b64encode(consumed.serialize()).decode()  # __pfn_input_msg_id__
    assert input_key(encoded) == id_key(receipt) == "12:34:0"
    # Pulsar's worker writes it URL-safe; find an id whose base64 differs in the two alphabets.
    odd = next(
        m
        for e in range(10_000)
        if "+" in base64.b64encode((m := pulsar.MessageId(0, 251, e, 0)).serialize()).decode()
        or "/" in base64.b64encode(m.serialize()).decode()
    )
    assert input_key(base64.urlsafe_b64encode(odd.serialize()).decode()) == id_key(odd)
    assert input_key(base64.b64encode(odd.serialize()).decode()) == id_key(odd)
    assert id_key(pulsar.MessageId(-1, 12, 35, -1)) != id_key(receipt)
    assert id_key(pulsar.MessageId(-1, 12, 34, 3)) == "12:34:3"


def test_payloads_are_deterministic_and_survive_the_identity_serde_as_strings() -> None:
    trivial = payloads("trivial", 3, first=10)
    assert trivial == ["message-10", "message-11", "message-12"]
    iris = payloads("iris", 152)
    assert iris[0] == "5.1,3.5,1.4,0.2" and iris[150] == iris[0]
    assert payloads("iris", 2, first=150) == iris[150:152]
    for text in (*trivial, *iris[:5]):
        assert SERDE.deserialize(text.encode()) == text  # never an int or a float


def test_drain_figures_count_from_first_to_last_output_and_the_start_cost() -> None:
    sent = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0, "e": 1.0}
    published = {"a": 110.0, "b": 110.5, "c": 111.0, "d": 112.0, "other": 200.0}
    figures = drain_figures(sent, published, started=100.0)
    assert figures["outputs"] == 4 and figures["missing"] == 1
    assert figures["msgs_per_s"] == pytest.approx(1.5)  # 3 intervals in 2 s
    assert figures["span_s"] == 2.0
    assert figures["start_to_first_output_s"] == 10.0
    assert figures["wall_s_with_startup"] == 12.0
    nothing = drain_figures(sent, {}, started=100.0)
    assert nothing["outputs"] == 0 and nothing["missing"] == 5
    assert math.isnan(nothing["msgs_per_s"])


def test_latency_figures_to_output_publish_and_to_arrival() -> None:
    sent = {"a": 10.0, "b": 11.0, "c": 12.0}
    published = {"a": 10.010, "b": 11.030}
    arrived = {"a": 10.015, "b": 11.040}
    figures = latency_figures(sent, published, arrived)
    assert figures["missing"] == 1
    assert figures["to_output_publish"]["count"] == 2
    assert figures["to_output_publish"]["p50_ms"] == pytest.approx(20.0)
    assert figures["to_output_publish"]["max_ms"] == pytest.approx(30.0)
    assert figures["to_arrival"]["max_ms"] == pytest.approx(40.0)


def test_wrong_outputs_compares_each_output_with_its_inputs_expected_answer() -> None:
    bodies = {"a": "x", "b": "y", "c": "z"}
    values = {"a": "x!", "b": "y?"}  # c has no output: missing, not wrong

    def exclaim(batch: list[str]) -> list[str]:
        return [f"{b}!" for b in batch]

    assert wrong_outputs(bodies, values, exclaim) == 1
    assert wrong_outputs(bodies, {}, exclaim) == 0


def _variant(rate: float, p50: float, p99: float, start: float) -> dict:
    return {
        "throughput": {"msgs_per_s": rate, "start_to_first_output_s": start},
        "latency": {"missing": 0, "to_output_publish": {"p50_ms": p50, "p99_ms": p99}},
    }


def test_ratios_are_against_the_raw_loop_and_pulsars_worker() -> None:
    variants = {
        RAY: _variant(3000.0, 12.0, 30.0, 4.0),
        PULSAR: _variant(1500.0, 5.0, 15.0, 20.0),
        RAW: _variant(6000.0, 10.0, 20.0, 2.0),
    }
    got = ratios(variants)
    assert got[RAY]["msgs_per_s_vs_raw"] == 0.5
    assert got[RAY]["msgs_per_s_vs_pulsar_worker"] == 2.0
    assert got[RAY]["p99_vs_pulsar_worker"] == 2.0
    assert got[RAW]["msgs_per_s_vs_raw"] == 1.0
    assert got[PULSAR]["msgs_per_s_vs_pulsar_worker"] == 1.0


def test_a_failed_variant_has_no_figures_and_takes_no_ratio_down() -> None:
    variants = {RAY: _variant(3000.0, 12.0, 30.0, 4.0), PULSAR: {"error": "did not start"}}
    got = ratios(variants)
    assert math.isnan(got[RAY]["msgs_per_s_vs_pulsar_worker"])
    assert math.isnan(got[RAY]["msgs_per_s_vs_raw"])  # no raw variant at all
    assert math.isnan(got[PULSAR]["msgs_per_s_vs_pulsar_worker"])


def test_table_rows_one_per_function_and_variant() -> None:
    functions = {
        "trivial": {
            RAY: _variant(3000.0, 12.0, 30.0, 4.0),
            RAW: _variant(6000.0, 10.0, 20.0, 2.0),
            PULSAR: {"error": "x"},
        }
    }
    rows = table_rows(functions)
    assert rows[0] == ["trivial", RAY, "3,000", "0.50", "-", "12.0", "30.0", "0", "4.0"]
    assert rows[2] == ["trivial", PULSAR, "-", "-", "-", "-", "-", "-", "-"]
    assert len(rows) == 3


def test_quick_shrinks_every_phase() -> None:
    full, quick = parse_args([]), parse_args(["--quick"])
    assert (full.messages, full.rate, full.duration) == (20_000, 200, 10)
    assert (quick.messages, quick.rate, quick.duration) == (3000, 100, 5)
    assert quick.drain_s < full.drain_s
    assert parse_args(["--functions", "iris"]).functions == ["iris"]
    assert RUNTIME_BATCH == 100  # the Ray runtime's default micro-batch, read from its signature
