"""Settings of the outside services: local state, Pulsar, Prefect, Ray, the database, logging."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self
from urllib.parse import urlparse

from pydantic import BaseModel, SecretStr, model_validator

PROJECT_DIR = Path(__file__).resolve().parents[2]


class ServicesSettings(BaseModel):
    """Where the services listen and keep their state, and how clients authenticate."""

    # Where services keep state and logs.
    local_dir: Path = PROJECT_DIR / ".local"
    # Logging: "json" writes one JSON object per line with the run id (mlplatform/logs.py).
    log_format: Literal["text", "json"] = "text"

    # Messaging.
    pulsar_service_url: str = "pulsar://127.0.0.1:6650"
    pulsar_admin_url: str = "http://127.0.0.1:8080"
    pulsar_heap: str = "512m"
    pulsar_direct_memory: str = "512m"
    # Also run Pulsar's own functions worker in the broker (pulsar-admin functions create).
    pulsar_functions_worker: bool = False
    # Token (JWT) authentication. Clients send the token from pulsar_auth_token or from the file
    # pulsar_auth_token_file (read at each connect, so it can be rotated); setting both is an error.
    # With neither, and pulsar_auth on, clients use the client-role token infra generated.
    pulsar_auth_token: SecretStr | None = None
    pulsar_auth_token_file: Path | None = None
    # The embedded broker: authentication + namespace authorization. Restart Pulsar after changing.
    # Its secret key and tokens live in pulsar_auth_dir (.local/state/pulsar/auth, never committed).
    pulsar_auth: bool = False
    pulsar_auth_admin_role: str = "mlp-admin"  # superuser: the broker's own clients and infra
    pulsar_auth_client_role: str = "mlp-client"  # the platform's clients: produce + consume

    # Orchestration.
    prefect_api_url: str = "http://127.0.0.1:4200/api"
    work_pool: str = "mlp-process"
    # Basic auth of the Prefect API: PREFECT_SERVER_API_AUTH_STRING on the server and
    # PREFECT_API_AUTH_STRING on clients (infra passes both). "user:password" by convention.
    prefect_api_auth_string: SecretStr | None = None
    # The embedded Prefect server's database (SQLAlchemy async URL, e.g.
    # postgresql+asyncpg://user:password@host/db); default: SQLite under its PREFECT_HOME.
    prefect_database_url: SecretStr | None = None

    # Inference engine: an address of a running Ray cluster, or "local" for a private ray.init().
    ray_address: str = "127.0.0.1:6379"
    ray_dashboard_port: int = 8265
    ray_num_cpus: int = 2
    ray_object_store_bytes: int = 1_000_000_000

    # Checkpoints and the model registry (SQLAlchemy URL). Default: SQLite under local_dir.
    database_url: str | None = None

    @model_validator(mode="after")
    def _one_pulsar_token_source(self) -> Self:
        if self.pulsar_auth_token is not None and self.pulsar_auth_token_file is not None:
            raise ValueError(
                "set MLP_PULSAR_AUTH_TOKEN or MLP_PULSAR_AUTH_TOKEN_FILE, not both: "
                "remove one of them from the environment or .env"
            )
        return self

    @property
    def pulsar_auth_dir(self) -> Path:
        return self.state_dir / "pulsar" / "auth"

    def pulsar_role_token_file(self, role: str) -> Path:
        """Where infra keeps the embedded broker's token for `role`."""
        return self.pulsar_auth_dir / f"{role}.token"

    @property
    def resolved_pulsar_token_file(self) -> Path | None:
        """The token file clients use: the configured one, else the embedded client token."""
        if self.pulsar_auth_token_file is not None:
            return self.pulsar_auth_token_file
        if self.pulsar_auth and self.pulsar_auth_token is None:
            return self.pulsar_role_token_file(self.pulsar_auth_client_role)
        return None

    def pulsar_token(self) -> str | None:
        """The token clients send, or None without authentication. Never log it."""
        if self.pulsar_auth_token is not None:
            return self.pulsar_auth_token.get_secret_value()
        path = self.resolved_pulsar_token_file
        if path is None:
            return None
        try:
            return path.read_text().strip()
        except OSError as error:
            raise ValueError(
                f"cannot read the Pulsar token file {path} ({error.strerror}): set "
                "MLP_PULSAR_AUTH_TOKEN_FILE to a readable file, or start the broker with "
                "MLP_PULSAR_AUTH=true so infra creates it"
            ) from error

    # The embedded services listen where the URLs above point: one place to change a port.
    @property
    def pulsar_broker_port(self) -> int:
        return urlparse(self.pulsar_service_url).port or 6650

    @property
    def pulsar_web_port(self) -> int:
        return urlparse(self.pulsar_admin_url).port or 8080

    @property
    def prefect_port(self) -> int:
        return urlparse(self.prefect_api_url).port or 4200

    @property
    def ray_port(self) -> int:
        _, _, port = self.ray_address.rpartition(":")
        return int(port) if port.isdigit() else 6379

    @property
    def state_dir(self) -> Path:
        return self.local_dir / "state"

    @property
    def log_dir(self) -> Path:
        return self.local_dir / "logs"

    @property
    def jar_dir(self) -> Path:
        return self.local_dir / "jars"

    @property
    def pulsar_home(self) -> Path:
        return self.local_dir / "pulsar"

    @property
    def model_dir(self) -> Path:
        return self.local_dir / "models"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'platform.db'}"
