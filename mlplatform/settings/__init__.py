"""The one settings object. Every knob is an env var with the MLP_ prefix (see .env.example).

Defaults are the embedded, one-machine set-up that `make up` starts; pointing the platform at
clusters changes only these values, never code. The fields are declared in sections, one module
each; `Settings` joins them, so code reads every field flat (`s.batch_size`) and the env name is
always MLP_<FIELD>.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Self

from pydantic import SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlplatform.dataset.spec import load_spec
from mlplatform.settings.batch import BatchSettings
from mlplatform.settings.flink import FlinkSettings
from mlplatform.settings.lake import DEFAULT_DATASET, LakeSettings
from mlplatform.settings.maintenance import MaintenanceSettings
from mlplatform.settings.predictor import PredictorSettings
from mlplatform.settings.secrets import (
    URL_FIELDS,
    read_secrets_file,
    secret_fields,
    write_secrets_file,
)
from mlplatform.settings.serve import ServeSettings
from mlplatform.settings.services import PROJECT_DIR, ServicesSettings
from mlplatform.settings.stream import StreamSettings
from mlplatform.settings.training import TrainingSettings

__all__ = ["PROJECT_DIR", "SECTIONS", "TOPIC_FIELDS", "Settings", "get_settings"]

# The topics a dataset other than the default one gets of its own (Settings._resources_per_dataset).
TOPIC_FIELDS = (
    "features_topic",
    "predictions_topic",
    "dead_letter_topic",
    "quarantine_topic",
    "raw_events_topic",
)


class Settings(
    ServicesSettings,
    LakeSettings,
    TrainingSettings,
    BatchSettings,
    StreamSettings,
    ServeSettings,
    PredictorSettings,
    FlinkSettings,
    MaintenanceSettings,
    BaseSettings,
):
    """Every section's fields on one object, read from MLP_* env vars and PROJECT_DIR/.env."""

    model_config = SettingsConfigDict(
        env_prefix="MLP_", env_file=PROJECT_DIR / ".env", extra="ignore"
    )

    @model_validator(mode="after")
    def _resources_per_dataset(self) -> Self:
        """A dataset other than the default one gets tables, topics and a subscription of its
        own, unless they are set: `<namespace>_<dataset>`, topics named `<dataset>-<topic>`,
        `<subscription>-<dataset>` (and a landing folder: `resolved_landing_dir`). Two datasets
        then run side by side on one set of services; the default dataset keeps plain names."""
        name = self.dataset_name
        if name == DEFAULT_DATASET:
            return self
        default = {field: info.default for field, info in type(self).model_fields.items()}
        own = {
            "namespace": f"{default['namespace']}_{name}",
            "stream_subscription": f"{default['stream_subscription']}-{name}",
        }
        for topic in TOPIC_FIELDS:
            base, _, leaf = default[topic].rpartition("/")
            own[topic] = f"{base}/{name}-{leaf}"
        for field, value in own.items():
            if field not in self.model_fields_set:
                self.__dict__[field] = value
        return self

    @model_validator(mode="after")
    def _serving_per_named_model(self) -> Self:
        """A model named explicitly gets an application and route of its own by default."""
        if self.model_name is not None:
            if "serve_app_name" not in self.model_fields_set:
                self.__dict__["serve_app_name"] = f"model-{self.model_name}"
            if "serve_route_prefix" not in self.model_fields_set:
                self.__dict__["serve_route_prefix"] = f"/models/{self.model_name}"
        return self

    def for_dataset(self, dataset: str) -> Settings:
        """The dataset (a bundled spec's name or a spec file, as MLP_DATASET) beside this one, on
        the same services and database: tables, topics, a subscription and a landing folder of
        its own, named from these settings' names by the rule of `_resources_per_dataset`; its
        columns from its spec, its model its own."""
        name = load_spec(dataset).name
        if name == self.dataset_name:
            return self
        own, plain = self.dataset_name, {}
        strip = own != DEFAULT_DATASET
        plain["namespace"] = self.namespace.removesuffix(f"_{own}") if strip else self.namespace
        subscription = self.stream_subscription
        plain["stream_subscription"] = (
            subscription.removesuffix(f"-{own}") if strip else subscription
        )
        for topic in TOPIC_FIELDS:
            base, _, leaf = getattr(self, topic).rpartition("/")
            plain[topic] = f"{base}/{leaf.removeprefix(f'{own}-') if strip else leaf}"
        landing = self.resolved_landing_dir
        plain["landing_dir"] = landing.with_name(landing.name.removesuffix(f"-{own}"))
        if name != DEFAULT_DATASET:
            plain["namespace"] = f"{plain['namespace']}_{name}"
            plain["stream_subscription"] = f"{plain['stream_subscription']}-{name}"
            for topic in TOPIC_FIELDS:
                base, _, leaf = plain[topic].rpartition("/")
                plain[topic] = f"{base}/{name}-{leaf}"
            landing = plain["landing_dir"]
            plain["landing_dir"] = landing.with_name(f"{landing.name}-{name}")
        columns = {"key_column", "feature_columns", "label_column", "label_names", "model_name"}
        fields = {k: v for k, v in self.model_dump(exclude_unset=True).items() if k not in columns}
        return type(self).model_validate({**fields, **plain, "dataset": dataset})

    def for_model(self, name: str | None) -> Settings:
        """These settings working on the registry's model `name` (None: as they are)."""
        if name is None or name == self.model_name:
            return self
        fields = self.model_dump(exclude_unset=True)
        return type(self).model_validate({**fields, "model_name": name})

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any], str | None]]:
        """Pickled (to Ray actors, Serve replicas) as it is, fields set explicitly or not,
        without its secrets: they stay in an owner-only file whose path travels instead
        (mlplatform/settings/secrets.py)."""
        secrets = secret_fields(self)
        state = self.__getstate__()
        state["__dict__"] = {**state["__dict__"], **dict.fromkeys(secrets)}
        path = write_secrets_file(self.state_dir / "secrets", secrets) if secrets else None
        return _unpickle, (state, str(path) if path else None)


def _unpickle(state: dict[str, Any], secrets_path: str | None) -> Settings:
    s = Settings.__new__(Settings)
    s.__setstate__(state)
    for name, value in (read_secrets_file(secrets_path) if secrets_path else {}).items():
        s.__dict__[name] = value if name in URL_FIELDS else SecretStr(value)
    return s


SECTIONS = tuple(base for base in Settings.__bases__ if base is not BaseSettings)


@lru_cache
def get_settings() -> Settings:
    return Settings()
