"""`mlp functions` on a real broker and real Ray: the pulsar-admin workflow end to end, state
that survives restarts, EFFECTIVELY_ONCE through a kill -9, and windows closing on count and on
time. Every function, topic and database here is this module's own and is deleted after it."""

from __future__ import annotations

import base64
import json
import os
import signal
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from checkpoints.function_store import FunctionStore
from mlplatform.connectors.pulsar_io import ensure_partitioned_topic, publish, read_all
from mlplatform.inference.stream import functions_admin
from mlplatform.inference.stream.function_spec import FunctionSpec
from mlplatform.ops.cli import app
from mlplatform.settings import PROJECT_DIR, Settings
from tests.helpers import settings_env, settings_in_process, wait_until

pytestmark = pytest.mark.integration

EXAMPLES = PROJECT_DIR / "examples" / "functions"
WORD_COUNT, WINDOWED_MEAN = str(EXAMPLES / "word_count.py"), str(EXAMPLES / "windowed_mean.py")


@pytest.fixture(scope="module")
def s(isolated: Settings) -> Iterator[Settings]:
    yield isolated
    for name in functions_admin.list_functions(isolated):  # whatever a failed test left running
        functions_admin.delete(isolated, f"public/default/{name}", purge_state=True)


@pytest.fixture
def cli(s: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    """The `mlp` app in this process, on this module's settings."""
    with settings_in_process(monkeypatch, settings_env(s)):
        yield CliRunner()


def _topic(kind: str) -> str:
    return f"persistent://public/default/fn-{kind}-{uuid.uuid4().hex[:8]}"


def _ok(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(app, ["functions", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_the_cli_creates_triggers_restarts_updates_and_deletes_a_function(
    s: Settings, cli: CliRunner
) -> None:
    name, words, counts = f"wc-{uuid.uuid4().hex[:6]}", _topic("words"), _topic("counts")
    flags = ["--name", name, "--py", WORD_COUNT, "--classname", "word_count.WordCount"]
    created = _ok(cli, "create", *flags, "--inputs", words, "--output", counts)
    assert f"public/default/{name}" in created and name in json.loads(_ok(cli, "list"))

    answer = _ok(cli, "trigger", "--name", name, "--trigger-value", "to be or not to be")
    assert answer.strip() == "to=2 be=2 or=1 not=1"
    status = json.loads(_ok(cli, "status", "--name", name))
    assert (status["numRunning"], status["numSuccessfullyProcessed"]) == (1, 1)
    # The input is acknowledged after its output is sent and its state committed: the backlog
    # reaches 0 a moment after the answer.
    backlog = lambda: json.loads(_ok(cli, "status", "--name", name))["backlog"]  # noqa: E731
    wait_until("the triggering message acknowledged", lambda: backlog() == 0, timeout_s=30)
    stats = json.loads(_ok(cli, "stats", "--name", name))
    assert stats["instances"][0]["userMetrics"]["words"]["sum"] == 6.0

    # State is the store's, not the instance's: it survives a restart and an update.
    _ok(cli, "restart", "--name", name)
    assert _ok(cli, "trigger", "--name", name, "--trigger-value", "to be").strip() == "to=3 be=3"
    _ok(cli, "update", "--name", name, "--user-config", '{"note": "v2"}')
    spec = json.loads(_ok(cli, "get", "--name", name))
    assert spec["user_config"] == {"note": "v2"} and spec["inputs"] == [words]
    assert _ok(cli, "trigger", "--name", name, "--trigger-value", "be").strip() == "be=4"

    metrics = _ok(cli, "metrics")
    line = next(
        m
        for m in metrics.splitlines()
        if m.startswith("pulsar_function_processed_successfully_total{") and f'name="{name}"' in m
    )
    assert float(line.rsplit(" ", 1)[1]) == 1.0  # the instance started by the update: one message

    # Each answer names its input as Pulsar's runtime does (what `trigger` matches on).
    outputs = read_all(s, counts)
    assert len(outputs) == 3 and {m.properties()["__pfn_input_topic__"] for m in outputs} == {words}
    assert all(base64.b64decode(m.properties()["__pfn_input_msg_id__"]) for m in outputs)

    _ok(cli, "delete", "--name", name, "--purge-state")
    assert name not in json.loads(_ok(cli, "list"))
    gone = cli.invoke(app, ["functions", "trigger", "--name", name, "--trigger-value", "x"])
    assert gone.exit_code == 1 and "does not exist" in gone.output
    assert FunctionStore(s.database_url).counter(f"public/default/{name}", "be") == 0


def test_a_function_killed_mid_stream_counts_and_answers_each_message_once(s: Settings) -> None:
    """EFFECTIVELY_ONCE, two instances on a two-partition topic, one killed with SIGKILL while
    messages flow: every counter and every output exactly once, checked from the store and the
    output topic."""
    words, counts = _topic("eo-words"), _topic("eo-counts")
    ensure_partitioned_topic(s, words, 2)
    spec = FunctionSpec(
        name=f"eo-{uuid.uuid4().hex[:6]}",
        py=WORD_COUNT,
        classname="WordCount",
        inputs=(words,),
        output=counts,
        parallelism=2,
        processing_guarantees="EFFECTIVELY_ONCE",
    )
    n = 3000
    bodies = [f"w{i % 7}".encode() for i in range(n)]
    functions_admin.create(s, spec)
    try:
        store = FunctionStore(s.database_url)
        total = lambda: sum(store.counter(spec.fqfn, f"w{k}") for k in range(7))  # noqa: E731
        publish(s, words, bodies, keys=[str(i) for i in range(n)])
        wait_until("a quarter of the messages counted", lambda: total() >= n // 4, 120, 0.05)
        victim = functions_admin.instance_stats(s, spec)[0]
        os.kill(int(victim["workerId"].rpartition(":")[2]), signal.SIGKILL)
        assert total() < n, "every message was counted before the kill: the test proves nothing"
        wait_until("every message counted", lambda: total() >= n, 180)
        wait_until("the backlog drained", lambda: functions_admin.backlog(s, spec) == 0, 120)
        assert {f"w{k}": store.counter(spec.fqfn, f"w{k}") for k in range(7)} == dict(
            Counter(b.decode() for b in bodies)
        )
        outputs = read_all(s, counts)
        inputs = Counter(m.properties()["__pfn_input_msg_id__"] for m in outputs)
        assert len(inputs) == n and max(inputs.values()) == 1  # one answer per input, no more
        restarts = functions_admin.status(s, spec.fqfn)["instances"][0]["status"]["numRestarts"]
        assert restarts >= 1
    finally:
        functions_admin.delete(s, spec.fqfn, purge_state=True)


def _window_outputs(s: Settings, topic: str, expected: int) -> list[list[str]]:
    outputs = wait_until(
        f"{expected} windows", lambda: (o := read_all(s, topic)) and len(o) >= expected and o, 60
    )
    return [m.data().decode().split(",") for m in outputs]


def test_count_windows_close_on_count_and_time_windows_on_time(s: Settings) -> None:
    numbers, means = _topic("numbers"), _topic("means")
    by_count = FunctionSpec(
        name=f"mean-count-{uuid.uuid4().hex[:6]}",
        py=WINDOWED_MEAN,
        classname="windowed_mean.WindowedMean",
        inputs=(numbers,),
        output=means,
        window_length_count=5,
        processing_guarantees="EFFECTIVELY_ONCE",
    )
    times, time_means = _topic("times"), _topic("time-means")
    by_time = by_count.model_copy(
        update={
            "name": f"mean-time-{uuid.uuid4().hex[:6]}",
            "inputs": (times,),
            "output": time_means,
            "window_length_count": None,
            "window_length_duration_ms": 1500,
            "processing_guarantees": "ATLEAST_ONCE",
        }
    )
    functions_admin.create(s, by_count)
    functions_admin.create(s, by_time)
    try:
        publish(s, numbers, [str(i).encode() for i in range(12)])
        windows = _window_outputs(s, means, 2)
        assert [w[1:] for w in windows] == [["5", "5", "2"], ["10", "5", "7"]]
        assert read_all(s, means) and len(read_all(s, means)) == 2  # 10 and 11 still open

        publish(s, times, [b"1", b"2", b"6"])  # and nothing after: the clock closes the window
        # Usually one window; two when a window's end falls between the three publishes.
        counted = lambda: sum(int(m.data().decode().split(",")[2]) for m in read_all(s, time_means))  # noqa: E731
        wait_until("the 3 records in closed windows", lambda: counted() >= 3, 60)
        closed = _window_outputs(s, time_means, 1)
        assert sum(int(w[2]) for w in closed) == 3
        assert all(int(w[1]) - int(w[0]) == 1500 for w in closed)
        weighted = sum(int(w[2]) * float(w[3]) for w in closed)
        assert weighted == pytest.approx(9.0)
    finally:
        functions_admin.delete(s, by_count.fqfn, purge_state=True)
        functions_admin.delete(s, by_time.fqfn, purge_state=True)


def test_localrun_runs_in_the_foreground_until_its_limit(s: Settings, cli: CliRunner) -> None:
    words, counts = _topic("local-words"), _topic("local-counts")
    publish(s, words, [b"a b", b"b", b"c"])
    name = f"local-{uuid.uuid4().hex[:6]}"
    flags = ["--name", name, "--py", WORD_COUNT, "--classname", "word_count.WordCount"]
    try:
        ran = json.loads(
            _ok(
                cli,
                "localrun",
                *flags,
                "--inputs",
                words,
                "--output",
                counts,
                "--max-messages",
                "3",
                "--timeout-s",
                "60",
            )
        )
        assert ran["processed"] == 3
        assert sorted(m.data().decode() for m in read_all(s, counts)) == ["a=1 b=1", "b=2", "c=1"]
    finally:
        FunctionStore(s.database_url).remove(f"public/default/{name}", state=True)
