"""Promotion: training.decide, and the registry's decisions, rollback and artifact checks."""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path

import pytest
import skops.io
from sklearn.dummy import DummyClassifier

from mlplatform.registry import model_registry
from mlplatform.registry.model_registry import ModelIntegrityError, ModelRef, model_ref
from mlplatform.settings import Settings
from mlplatform.training.retrain import decide

pytestmark = pytest.mark.unit


# --- decide ------------------------------------------------------------------------------------


def _decide_settings(**update: object) -> Settings:
    return Settings(_env_file=None, **update)


def test_decide_without_champion_promotes() -> None:
    s = _decide_settings(promotion_margin=0.0)
    assert decide(s, 0.1, None) == ("promote", "no champion yet")
    assert decide(s, 0.0, None) == ("promote", "no champion yet")


def test_decide_rejects_worse_by_more_than_margin() -> None:
    s = _decide_settings(promotion_metric="macro_f1", promotion_margin=0.05)
    verdict, reason = decide(s, 0.80, 0.90)
    assert verdict == "reject"
    assert reason == "macro_f1 0.8000 vs champion 0.9000 on the same holdout (margin 0.05)"


def test_decide_promotes_within_margin() -> None:
    s = _decide_settings(promotion_margin=0.05)
    verdict, reason = decide(s, 0.87, 0.90)
    assert verdict == "promote"
    assert "0.8700 vs champion 0.9000" in reason


def test_decide_at_exactly_the_margin_promotes() -> None:
    s = _decide_settings(promotion_margin=0.25)  # binary-exact values: no rounding involved
    assert decide(s, 0.5, 0.75)[0] == "promote"
    assert decide(s, 0.4999, 0.75)[0] == "reject"


def test_decide_equal_scores_promote() -> None:
    s = _decide_settings(promotion_margin=0.0)
    assert decide(s, 0.9, 0.9)[0] == "promote"
    assert decide(s, 0.0, 0.0)[0] == "promote"


def test_decide_better_promotes_and_zero_margin_rejects_any_loss() -> None:
    s = _decide_settings(promotion_margin=0.0)
    assert decide(s, 0.95, 0.9)[0] == "promote"
    assert decide(s, 0.8999, 0.9)[0] == "reject"


def test_decide_reason_names_the_configured_metric() -> None:
    s = _decide_settings(promotion_metric="accuracy", promotion_margin=0.01)
    _, reason = decide(s, 0.5, 0.6)
    assert reason.startswith("accuracy 0.5000 vs champion 0.6000")
    assert "margin 0.01" in reason


# --- registry: decisions and rollback ----------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # get_engine is cached per URL: every test gets its own database file.
    return Settings(
        _env_file=None, local_dir=tmp_path, database_url=f"sqlite:///{tmp_path}/db.sqlite"
    )


def _register(s: Settings, model: object | None = None) -> model_registry.ModelVersion:
    if model is None:
        model = DummyClassifier(strategy="constant", constant=1).fit([[0.0], [1.0]], [0, 1])
    return model_registry.register(
        s,
        model,
        family="dummy",
        params={},
        metrics={"accuracy": 0.5, "macro_f1": 0.5},
        training_table="ml.features",
        training_snapshot_id=1,
        training_rows=2,
        feature_order=["x"],
        label_names=["no", "yes"],
    )


def _champion(s: Settings) -> int:
    return model_registry.get_version(s).version


def _decisions(s: Settings) -> list[tuple[str, int, int | None, str]]:
    return [
        (d.action, d.version, d.previous_champion, d.reason)
        for d in model_registry.list_decisions(s)
    ]


def test_no_decisions_in_a_new_registry(settings: Settings) -> None:
    assert model_registry.list_decisions(settings) == []


def test_record_promote_reject_and_rollback(settings: Settings) -> None:
    v1, v2, v3 = (_register(settings).version for _ in range(3))
    model_registry.record_decision(settings, "promote", v1, "no champion yet")
    assert _champion(settings) == v1
    model_registry.record_decision(settings, "promote", v2, "better")
    assert _champion(settings) == v2
    model_registry.record_decision(settings, "reject", v3, "worse")
    assert _champion(settings) == v2  # a rejection changes nothing
    assert model_registry.get_version(settings, v3).stage == "candidate"
    model_registry.record_decision(settings, "rollback", v1, "by hand")
    assert _champion(settings) == v1
    assert model_registry.get_version(settings, v2).stage == "archived"
    assert _decisions(settings) == [
        ("promote", v1, None, "no champion yet"),
        ("promote", v2, v1, "better"),
        ("reject", v3, v2, "worse"),
        ("rollback", v1, v2, "by hand"),
    ]
    decisions = model_registry.list_decisions(settings)
    assert all(d.at is not None for d in decisions)
    assert [d.id for d in decisions] == sorted(d.id for d in decisions)


def test_promote_records_reason(settings: Settings) -> None:
    v1 = _register(settings).version
    model_registry.promote(settings, v1)
    assert _decisions(settings) == [("promote", v1, None, "promoted by hand")]


def test_record_decision_for_unknown_version_records_nothing(settings: Settings) -> None:
    v1 = _register(settings).version
    model_registry.promote(settings, v1)
    with pytest.raises(LookupError, match="registry has no version 42"):
        model_registry.record_decision(settings, "promote", 42, "typo")
    assert _champion(settings) == v1
    assert len(model_registry.list_decisions(settings)) == 1


def test_rollback_without_version_restores_previous_champion(settings: Settings) -> None:
    v1, v2, v3 = (_register(settings).version for _ in range(3))
    for version in (v1, v2, v3):
        model_registry.promote(settings, version)
    assert model_registry.rollback(settings) == v2
    assert _champion(settings) == v2
    assert model_registry.get_version(settings, v3).stage == "archived"
    assert _decisions(settings)[-1] == ("rollback", v2, v3, f"rollback to version {v2}")


def test_repeated_rollbacks_keep_stepping_back(settings: Settings) -> None:
    v1, v2, v3 = (_register(settings).version for _ in range(3))
    for version in (v1, v2, v3):
        model_registry.promote(settings, version)
    assert model_registry.rollback(settings) == v2
    assert model_registry.rollback(settings) == v1
    with pytest.raises(LookupError, match="no earlier champion"):
        model_registry.rollback(settings)
    assert _champion(settings) == v1


def test_promoting_the_champion_again_does_not_break_rollback(settings: Settings) -> None:
    v1, v2 = (_register(settings).version for _ in range(2))
    for version in (v1, v2, v2):
        model_registry.promote(settings, version)
    assert model_registry.rollback(settings) == v1
    assert _champion(settings) == v1


def test_rollback_ignores_rejections(settings: Settings) -> None:
    v1, v2, v3 = (_register(settings).version for _ in range(3))
    model_registry.promote(settings, v1)
    model_registry.promote(settings, v2)
    model_registry.record_decision(settings, "reject", v3, "worse")
    assert model_registry.rollback(settings) == v1
    assert _champion(settings) == v1


def test_rollback_to_a_named_version(settings: Settings) -> None:
    v1, v2, v3 = (_register(settings).version for _ in range(3))
    for version in (v1, v2, v3):
        model_registry.promote(settings, version)
    assert model_registry.rollback(settings, v1) == v1
    assert _champion(settings) == v1
    assert _decisions(settings)[-1] == ("rollback", v1, v3, f"rollback to version {v1}")
    stages = [model_registry.get_version(settings, v).stage for v in (v1, v2, v3)]
    assert stages == ["champion", "archived", "archived"]


def test_rollback_to_a_never_promoted_candidate(settings: Settings) -> None:
    v1, v2 = (_register(settings).version for _ in range(2))
    model_registry.promote(settings, v1)
    assert model_registry.rollback(settings, v2) == v2
    assert _champion(settings) == v2


def test_rollback_with_no_earlier_champion_raises(settings: Settings) -> None:
    v1 = _register(settings).version
    model_registry.promote(settings, v1)
    with pytest.raises(LookupError, match="no earlier champion"):
        model_registry.rollback(settings)
    assert _champion(settings) == v1
    assert len(model_registry.list_decisions(settings)) == 1


def test_rollback_with_no_champion_at_all_raises(settings: Settings) -> None:
    _register(settings)
    with pytest.raises(LookupError, match="no earlier champion"):
        model_registry.rollback(settings)
    assert model_registry.list_decisions(settings) == []


def test_rollback_to_unknown_version_raises_and_keeps_champion(settings: Settings) -> None:
    v1, v2 = (_register(settings).version for _ in range(2))
    model_registry.promote(settings, v1)
    model_registry.promote(settings, v2)
    with pytest.raises(LookupError, match="the model registry has no version 99"):
        model_registry.rollback(settings, 99)
    assert _champion(settings) == v2
    assert [d[0] for d in _decisions(settings)] == ["promote", "promote"]


# --- artifacts ---------------------------------------------------------------------------------


def test_register_writes_a_skops_artifact_that_loads(settings: Settings) -> None:
    row = _register(settings)
    path = Path(row.artifact_path)
    assert path.suffix == ".skops"
    assert zipfile.is_zipfile(path)  # skops' format, not a pickle stream
    assert skops.io.get_untrusted_types(file=path) == []
    model = model_registry.load_model(model_ref(row))
    assert type(model) is DummyClassifier
    assert list(model.predict([[3.0]])) == [1]


def test_changed_bytes_in_a_skops_artifact_are_refused(settings: Settings) -> None:
    row = _register(settings)
    path = Path(row.artifact_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte different
    path.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="SHA-256") as info:
        model_registry.load_model(model_ref(row))
    assert row.sha256 in str(info.value)
    assert hashlib.sha256(bytes(data)).hexdigest() in str(info.value)


class _Payload:
    """A type outside scikit-learn and numpy; records whether skops ever rebuilt its state."""

    restored = False

    def __init__(self) -> None:
        self.value = 1

    def __setstate__(self, state: dict) -> None:
        type(self).restored = True
        self.__dict__.update(state)


def test_untrusted_type_is_refused_even_with_matching_sha(settings: Settings) -> None:
    model = DummyClassifier().fit([[0.0], [1.0]], [0, 1])
    row = _register(settings, {"model": model, "payload": _Payload()})
    path = Path(row.artifact_path)
    assert row.sha256 == model_registry.sha256_of(path)  # the hash is not what refuses it
    untrusted = skops.io.get_untrusted_types(file=path)
    assert any(t.endswith("_Payload") for t in untrusted)
    _Payload.restored = False
    with pytest.raises(ModelIntegrityError, match="outside scikit-learn and numpy") as info:
        model_registry.load_model(model_ref(row))
    assert "_Payload" in str(info.value)
    assert _Payload.restored is False


def test_untrusted_type_in_a_hand_written_artifact_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.skops"
    skops.io.dump([_Payload()], path)
    ref = ModelRef(
        version=7,
        artifact_path=str(path),
        sha256=model_registry.sha256_of(path),
        feature_order=("x",),
        label_names=("no", "yes"),
    )
    with pytest.raises(ModelIntegrityError, match="model version 7: .* holds types outside"):
        model_registry.load_model(ref)


class _Detonator:
    """Unpickling this sets a flag: proof that a pickle was executed."""

    fired = False

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_fire, ())


def _fire() -> None:
    _Detonator.fired = True


def test_legacy_pickle_artifact_is_never_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(_Detonator()))
    ref = ModelRef(
        version=3,
        artifact_path=str(path),
        sha256=model_registry.sha256_of(path),
        feature_order=("x",),
        label_names=("no", "yes"),
    )
    _Detonator.fired = False
    with pytest.raises(ModelIntegrityError, match="not a skops artifact"):
        model_registry.load_model(ref)
    assert _Detonator.fired is False
