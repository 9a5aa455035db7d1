"""Which settings are secrets, and how they reach workers without being written down.

A secret is a SecretStr field (the Pulsar token, the Serve API key, Prefect's auth string and
database URL) or a URL field that carries a password (`database_url`, `catalog_url`).

Settings travel to Ray actors and Serve replicas pickled, and Ray keeps an actor's arguments in
its GCS (and a Serve deployment's in its controller's checkpoint). So pickling `Settings` never
writes a secret: the secrets go to one owner-only file under `state_dir/secrets` (mode 0600 in a
0700 folder, named by a hash of its content, so the same secrets reuse one file) and the pickle
carries the file's path; unpickling on the worker reads the values back. A worker on another node
needs that path too: put `local_dir` on storage every node shares, or give each node its secrets
by file (`MLP_PULSAR_AUTH_TOKEN_FILE`, read at each connect).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, SecretStr

URL_FIELDS = ("database_url", "catalog_url")


def secret_fields(settings: BaseModel) -> dict[str, str]:
    """Field name -> value of every secret that is set."""
    found = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr) and value.get_secret_value():
            found[name] = value.get_secret_value()
        elif name in URL_FIELDS and value and urlsplit(value).password:
            found[name] = value
    return found


def write_secrets_file(folder: Path, secrets: dict[str, str]) -> Path:
    """An owner-only file holding `secrets` (JSON), created once per distinct content."""
    return owner_only_file(folder, json.dumps(secrets, sort_keys=True), ".json")


def owner_only_file(folder: Path, text: str, suffix: str) -> Path:
    """A file holding `text`, mode 0600 in `folder` (0700), named by a hash of `text`: created
    once, and kept (a worker restarted later, or a stream job reconnecting, reads it again)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    path = folder / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}{suffix}"
    if not path.exists():
        partial = folder / f".{path.name}.{os.getpid()}"
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(text)
        partial.replace(path)
    return path


def read_secrets_file(path: str) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except OSError as error:
        raise ValueError(
            f"cannot read the settings' secrets file {path} ({error.strerror}): a worker on "
            "another node needs MLP_LOCAL_DIR on storage every node shares, or its secrets by "
            "file (MLP_PULSAR_AUTH_TOKEN_FILE)"
        ) from error
