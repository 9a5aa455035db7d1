"""Pulsar Functions on Ray without services: the spec's checks, class names, the context's
state and secrets, and the `mlp functions` flags."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError
from typer.testing import CliRunner

from checkpoints.function_store import FunctionStore
from mlplatform.inference.stream.function_context import RayContext
from mlplatform.inference.stream.function_spec import FunctionSpec, load_function
from mlplatform.ops.cli import app
from mlplatform.settings import PROJECT_DIR, Settings

pytestmark = pytest.mark.unit
WORD_COUNT = str(PROJECT_DIR / "examples" / "functions" / "word_count.py")
IRIS = str(PROJECT_DIR / "examples" / "functions" / "iris_functions.py")


def _spec(**changes: object) -> FunctionSpec:
    values: dict[str, object] = {
        "name": "wc",
        "py": WORD_COUNT,
        "classname": "word_count.WordCount",
        "inputs": ("persistent://public/default/words",),
    }
    return FunctionSpec(**{**values, **changes})


@pytest.mark.parametrize("classname", ["word_count.WordCount", "WordCount"])
def test_pulsar_style_and_bare_class_names_load_the_class(classname: str) -> None:
    spec = _spec(classname=classname)
    assert type(load_function(spec.py, spec.classname)).__name__ == "WordCount"
    assert spec.fqfn == "public/default/wc" and spec.subscription == "public/default/wc"


def test_a_class_name_of_another_module_is_refused_with_the_right_spelling() -> None:
    with pytest.raises(ValidationError, match=r"not the file word_count.py \(use word_count.X"):
        _spec(classname="iris_prediction.X")


def test_a_missing_class_names_what_the_file_defines() -> None:
    with pytest.raises(AttributeError, match=r"defines no 'Nope' \(it defines: .*IrisPredict"):
        load_function(IRIS, "iris_functions.Nope")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"inputs": ()}, "--inputs or --topics-pattern"),
        ({"topics_pattern": "persistent://public/default/w.*"}, "exclude each other"),
        ({"py": "/nonexistent/f.py"}, "no such Python file"),
        ({"window_length_count": 10, "sliding_interval_duration_ms": 5}, "sliding-interval"),
        ({"window_length_count": 0}, "--window-length-count must be > 0"),
        ({"processing_guarantees": "EXACTLY"}, "ATLEAST_ONCE"),
        (
            {
                "inputs": (),
                "topics_pattern": "persistent://public/default/w.*",
                "processing_guarantees": "EFFECTIVELY_ONCE",
                "parallelism": 2,
            },
            "--parallelism 1",
        ),
    ],
)
def test_inconsistent_flags_are_refused_with_the_flag_named(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        _spec(**changes)


def test_the_spec_survives_its_json_round_trip() -> None:
    spec = _spec(user_config={"k": [1, 2]}, window_length_duration_ms=1000, parallelism=3)
    assert FunctionSpec.model_validate_json(spec.model_dump_json()) == spec
    assert spec.window is not None and spec.window.kind == "time"


@pytest.fixture
def context(tmp_path: Path) -> RayContext:
    s = Settings(database_url=f"sqlite:///{tmp_path}/db.sqlite", pulsar_auth_token=SecretStr("t0k"))
    spec = _spec(secrets={"token": "pulsar_auth_token"}, user_config={"a": "1"})
    return RayContext(s, spec, 0, client=None, store=FunctionStore(s.database_url))  # type: ignore[arg-type]


def test_state_reads_see_the_batch_and_commit_as_one(context: RayContext) -> None:
    context.incr_counter("w", 2)
    context.put_state("k", "v")
    assert context.get_counter("w") == 2 and context.get_state("k") == b"v"
    context.store.commit("public/default/wc", context.take_changes())
    context.incr_counter("w", 1)
    assert context.get_counter("w") == 3
    context.del_counter("w")
    assert context.get_counter("w") == 0
    context.incr_counter("w", 5)
    assert context.get_counter("w") == 5
    context.store.commit("public/default/wc", context.take_changes())
    assert context.store.counter("public/default/wc", "w") == 5
    assert context.get_state("k") == b"v"


def test_secrets_come_from_the_settings_and_config_from_the_spec(context: RayContext) -> None:
    assert context.get_secret("token") == "t0k"
    assert context.get_secret("unknown") is None
    assert context.get_user_config_value("a") == "1" and context.get_user_config_map() == {"a": "1"}
    assert context.get_function_id() == "public/default/wc"


def test_publish_refuses_an_unknown_message_conf_key(context: RayContext) -> None:
    with pytest.raises(ValueError, match=r"\['colour'\]"):
        context.publish("t", "x", message_conf={"colour": "red"})


def test_the_cli_names_a_bad_flag_and_an_unknown_function(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MLP_DATABASE_URL", f"sqlite:///{tmp_path}/db.sqlite")
    from mlplatform.settings import get_settings

    get_settings.cache_clear()
    runner = CliRunner()
    try:
        create = ["functions", "create", "--name", "wc", "--py", WORD_COUNT]
        bad = runner.invoke(
            app, [*create, "--classname", "WordCount", "--inputs", "t", "--user-config", "{x"]
        )
        assert bad.exit_code == 2 and "--user-config" in bad.output and "not JSON" in bad.output
        wrong = runner.invoke(app, [*create, "--classname", "other.WordCount", "--inputs", "t"])
        assert wrong.exit_code == 2 and "use word_count.WordCount" in wrong.output
        missing = runner.invoke(app, ["functions", "status", "--name", "nope"])
        assert missing.exit_code == 1 and "public/default/nope does not exist" in missing.output
        assert runner.invoke(app, ["functions", "list"]).output.strip() == "[]"
    finally:
        get_settings.cache_clear()
