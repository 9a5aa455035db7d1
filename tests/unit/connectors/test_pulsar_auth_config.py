"""Token authentication's pure pieces: settings, broker config, client headers, Flink options."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from infra.pulsar_config import (
    TOKEN_CLIENT_PLUGIN,
    TOKEN_PROVIDER,
    auth_overrides,
    secret_key_file,
    write_standalone_conf,
)
from mlplatform.connectors.pulsar_io import admin_headers
from mlplatform.preprocess import batch as preprocess
from mlplatform.preprocess.flink_job import build_statements, pulsar_auth_options
from mlplatform.settings import Settings

pytestmark = pytest.mark.unit

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtbHAtY2xpZW50In0.c2lnbmF0dXJl"


def _settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(_env_file=None, local_dir=tmp_path, **values)


def test_no_token_by_default(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    assert s.pulsar_token() is None
    assert admin_headers(s) == {}
    assert auth_overrides(s) == {}


def test_token_by_value_is_hidden_from_repr_and_dumps(tmp_path: Path) -> None:
    s = _settings(tmp_path, pulsar_auth_token=TOKEN)
    assert s.pulsar_token() == TOKEN
    assert TOKEN not in repr(s) and TOKEN not in str(s) and TOKEN not in s.model_dump_json()
    assert admin_headers(s) == {"Authorization": f"Bearer {TOKEN}"}


def test_token_file_is_read_at_each_call(tmp_path: Path) -> None:
    path = tmp_path / "client.token"
    path.write_text(TOKEN + "\n")
    s = _settings(tmp_path, pulsar_auth_token_file=path)
    assert s.pulsar_token() == TOKEN
    path.write_text("rotated")
    assert s.pulsar_token() == "rotated"


def test_token_and_token_file_together_are_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="not both") as error:
        _settings(tmp_path, pulsar_auth_token=TOKEN, pulsar_auth_token_file=tmp_path / "t")
    assert TOKEN not in str(error.value)


def test_embedded_auth_defaults_to_the_client_role_token(tmp_path: Path) -> None:
    s = _settings(tmp_path, pulsar_auth=True)
    expected = tmp_path / "state" / "pulsar" / "auth" / "mlp-client.token"
    assert s.resolved_pulsar_token_file == expected
    with pytest.raises(ValueError, match="MLP_PULSAR_AUTH_TOKEN_FILE"):
        s.pulsar_token()
    expected.parent.mkdir(parents=True)
    expected.write_text(TOKEN)
    assert s.pulsar_token() == TOKEN
    # A token given explicitly wins over the embedded default.
    assert _settings(tmp_path, pulsar_auth=True, pulsar_auth_token="x").pulsar_token() == "x"


def test_broker_auth_overrides_name_files_only(tmp_path: Path) -> None:
    s = _settings(tmp_path, pulsar_auth=True, pulsar_auth_admin_role="boss")
    overrides = auth_overrides(s)
    assert overrides["authenticationEnabled"] == overrides["authorizationEnabled"] == "true"
    assert overrides["authenticationProviders"] == TOKEN_PROVIDER
    assert overrides["tokenSecretKey"] == f"file://{secret_key_file(s)}"
    assert overrides["superUserRoles"] == "boss"
    assert overrides["brokerClientAuthenticationPlugin"] == TOKEN_CLIENT_PLUGIN
    assert overrides["brokerClientAuthenticationParameters"] == (
        f"file://{s.pulsar_auth_dir / 'boss.token'}"
    )


def test_standalone_conf_gets_the_auth_settings(tmp_path: Path) -> None:
    s = _settings(tmp_path, pulsar_auth=True)
    conf = s.pulsar_home / "conf"
    conf.mkdir(parents=True)
    (conf / "standalone.conf").write_text("authenticationEnabled=false\nsuperUserRoles=\n")
    write_standalone_conf(s)
    lines = (s.state_dir / "pulsar" / "standalone.conf").read_text().splitlines()
    assert "authenticationEnabled=true" in lines and "superUserRoles=mlp-admin" in lines
    assert "authenticationEnabled=false" not in lines


def test_flink_connector_gets_the_token_file_not_the_token(tmp_path: Path) -> None:
    assert pulsar_auth_options({}) == {}
    s = _settings(tmp_path, pulsar_auth=True)
    cfg = preprocess.job_config(s, tmp_path / "in", "job", s.resolved_pulsar_token_file)
    ddl, _ = build_statements(cfg)
    sink = next(statement for statement in ddl if "'connector' = 'pulsar'" in statement)
    assert f"'pulsar.client.authParams' = 'file://{s.resolved_pulsar_token_file}'" in sink
    assert f"'pulsar.client.authPluginClassName' = '{TOKEN_CLIENT_PLUGIN}'" in sink


def test_a_token_by_value_reaches_flink_as_an_owner_only_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = _settings(tmp_path, pulsar_auth_token=TOKEN, flink_python=Path(sys.executable))
    seen: dict[str, Any] = {}

    def fake_run(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        config_text = Path(command[-1]).read_text()
        seen["config"] = config_text
        token_file = Path(json.loads(config_text)["pulsar_token_file"])
        seen["token_file"] = token_file
        seen["token"] = token_file.read_text()
        seen["mode"] = token_file.stat().st_mode & 0o777
        return subprocess.CompletedProcess(command, 0, '{"job_ids": ["j1"]}\n', "")

    monkeypatch.setattr(preprocess.subprocess, "run", fake_run)
    assert preprocess.run_flink_job(s, tmp_path / "in", "job-2") == "j1"
    assert TOKEN not in seen["config"]
    assert (seen["token"], seen["mode"]) == (TOKEN, 0o600)
    assert seen["token_file"].parent == s.state_dir / "secrets"  # kept for reconnects
    assert not list((s.state_dir / "flink").iterdir())  # the config (catalog password) is not
