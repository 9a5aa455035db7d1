"""Settings pickled for workers (Ray actor arguments, Serve init arguments) carry no secret, and
the worker gets every secret back intact."""

from __future__ import annotations

import pickle
import stat
from pathlib import Path
from typing import Any

import pytest
import ray.cloudpickle
from pydantic import SecretStr

from mlplatform.settings import Settings
from mlplatform.settings.secrets import secret_fields

pytestmark = pytest.mark.unit

TOKEN = "eyJhbGciOiJIUzI1NiJ9.worker-token-value"
API_KEY = "serve-key-value-8f2c"
DB_PASSWORD = "db-password-value"
SECRETS = (TOKEN, API_KEY, DB_PASSWORD)


def _settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(_env_file=None, local_dir=tmp_path, **values)


@pytest.fixture
def with_secrets(tmp_path: Path) -> Settings:
    return _settings(
        tmp_path,
        pulsar_auth_token=SecretStr(TOKEN),
        serve_api_key=SecretStr(API_KEY),
        database_url=f"postgresql://mlp:{DB_PASSWORD}@127.0.0.1/platform",
        catalog_url="sqlite:////tmp/catalog.db",
    )


@pytest.mark.parametrize("dumps", [pickle.dumps, ray.cloudpickle.dumps], ids=["pickle", "ray"])
def test_a_pickle_holds_no_secret_and_restores_each_one(with_secrets: Settings, dumps) -> None:
    data = dumps(with_secrets)
    for secret in SECRETS:
        assert secret.encode() not in data
    assert b"sqlite:////tmp/catalog.db" in data  # a URL without a password travels as it is
    restored = pickle.loads(data)
    assert restored.pulsar_token() == TOKEN  # the value, not the mask pydantic dumps
    assert restored.serve_api_key.get_secret_value() == API_KEY
    assert restored.resolved_database_url == with_secrets.resolved_database_url
    assert restored == with_secrets


def test_secrets_wait_in_one_owner_only_file(with_secrets: Settings) -> None:
    pickle.dumps(with_secrets)
    pickle.dumps(with_secrets)  # the same secrets: the same file
    folder = with_secrets.state_dir / "secrets"
    files = list(folder.iterdir())
    assert len(files) == 1
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert all(secret in files[0].read_text() for secret in SECRETS)


def test_settings_without_secrets_write_no_file(tmp_path: Path) -> None:
    s = _settings(tmp_path, database_url=f"sqlite:///{tmp_path / 'p.db'}")
    assert secret_fields(s) == {}
    assert pickle.loads(pickle.dumps(s)) == s
    assert not (s.state_dir / "secrets").exists()


def test_a_token_file_travels_as_its_path(tmp_path: Path) -> None:
    path = tmp_path / "client.token"
    path.write_text(TOKEN)
    data = pickle.dumps(_settings(tmp_path, pulsar_auth_token_file=path))
    assert TOKEN.encode() not in data
    restored = pickle.loads(data)
    path.write_text("rotated")  # read at each connect, on the worker as on the driver
    assert restored.pulsar_token() == "rotated"


def test_a_missing_secrets_file_says_what_to_do(with_secrets: Settings) -> None:
    data = pickle.dumps(with_secrets)
    for path in (with_secrets.state_dir / "secrets").iterdir():
        path.unlink()
    with pytest.raises(ValueError, match="secrets file .* MLP_LOCAL_DIR on storage every node"):
        pickle.loads(data)


def test_the_serve_application_carries_no_api_key(with_secrets: Settings) -> None:
    from mlplatform.inference.serving.deployment import build_app

    data = ray.cloudpickle.dumps(build_app(with_secrets, model_version=3))
    for secret in SECRETS:
        assert secret.encode() not in data
