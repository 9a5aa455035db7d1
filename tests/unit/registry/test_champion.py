"""ChampionFollower on a temporary SQLite registry: the pinned version or the champion, checked
at most every model_refresh_s, switched on a promotion or a rollback, kept on a load error."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlplatform.registry import model_registry
from mlplatform.registry.champion import ChampionFollower
from mlplatform.registry.model_ref import ModelRef
from mlplatform.settings import Settings
from tests.helpers import register_constant_model

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None,
        local_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path}/db.sqlite",
        model_refresh_s=5.0,
    )


@pytest.fixture
def versions(settings: Settings) -> tuple[int, int]:
    first, second = (register_constant_model(settings, c).version for c in (0, 1))
    model_registry.promote(settings, first)
    return first, second


def test_follows_the_champion_once_a_period(settings: Settings, versions) -> None:
    first, second = versions
    clock = Clock()
    follower = ChampionFollower(settings, clock=clock)
    assert follower.current().ref.version == first
    assert list(follower.current().model.predict([[0.0]])) == [0]
    model_registry.promote(settings, second)
    clock.now += 4.9
    assert follower.seconds_to_check() == pytest.approx(0.1)
    assert follower.changed() is None  # not due: the registry is not asked
    assert follower.current().ref.version == first
    clock.now += 0.1
    switched = follower.changed()
    assert switched is not None and switched is follower.current()
    assert switched.ref.version == switched.row.version == second
    assert list(switched.model.predict([[0.0]])) == [1]
    clock.now += 5
    assert follower.changed() is None  # due, but the champion is the one loaded
    model_registry.rollback(settings)
    clock.now += 5
    assert follower.changed().ref.version == first  # type: ignore[union-attr]


def test_a_pinned_version_never_changes(settings: Settings, versions) -> None:
    first, second = versions
    clock = Clock()
    follower = ChampionFollower(settings, pinned_version=second, clock=clock)
    assert follower.pinned and follower.current().ref.version == second
    model_registry.promote(settings, second)
    model_registry.promote(settings, first)
    clock.now += 60
    assert follower.changed() is None
    assert follower.current().ref.version == second


def test_a_load_error_keeps_the_loaded_model_until_the_next_period(
    settings: Settings, versions
) -> None:
    first, second = versions
    clock = Clock()
    broken = {second}

    def load(ref: ModelRef) -> object:
        if ref.version in broken:
            raise RuntimeError(f"version {ref.version} is damaged")
        return model_registry.load_model(ref)

    follower = ChampionFollower(settings, load=load, clock=clock)
    assert follower.current().ref.version == first
    model_registry.promote(settings, second)
    clock.now += 5
    with pytest.raises(RuntimeError, match="damaged"):
        follower.changed()
    assert follower.current().ref.version == first
    broken.clear()
    assert follower.changed() is None  # the next check is one period after the failed one
    clock.now += 5
    assert follower.changed().ref.version == second  # type: ignore[union-attr]


def test_nothing_to_follow_says_so(settings: Settings) -> None:
    follower = ChampionFollower(settings)
    with pytest.raises(LookupError, match="no champion of model .iris."):
        follower.current()
    assert follower.loaded is None
