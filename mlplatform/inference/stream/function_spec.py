"""What `pulsar-admin functions create` is told, checked before anything runs.

The spec is stored as JSON in the platform's database (checkpoints.function_store) and handed to
each instance. Names follow Pulsar's: a function is `tenant/namespace/name`, its subscription is
that fully qualified name unless `subs_name` says otherwise, and `classname` is Pulsar's
`module.Class` (the module being the file's name) or a bare `Class`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mlplatform.inference.stream.function_windows import WindowConfig
from mlplatform.inference.user_predictor import import_file

Guarantees = Literal["ATLEAST_ONCE", "EFFECTIVELY_ONCE"]


class FunctionSpec(BaseModel):
    """One function: its code, topics, configuration and delivery guarantee."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    py: str
    classname: str
    inputs: tuple[str, ...] = ()
    topics_pattern: str | None = None
    output: str | None = None
    tenant: str = "public"
    namespace: str = "default"
    user_config: dict[str, Any] = Field(default_factory=dict)
    # Secret name -> a secret field of the platform's settings (e.g. "pulsar_auth_token").
    secrets: dict[str, str] = Field(default_factory=dict)
    parallelism: int = Field(default=1, ge=1, le=64)
    max_message_retries: int = Field(default=3, ge=0)
    dead_letter_topic: str | None = None
    subs_name: str | None = None
    processing_guarantees: Guarantees = "ATLEAST_ONCE"
    timeout_ms: int | None = Field(default=None, gt=0)
    window_length_count: int | None = None
    sliding_interval_count: int | None = None
    window_length_duration_ms: int | None = None
    sliding_interval_duration_ms: int | None = None
    max_lag_ms: int = 0
    window_timestamp: Literal["publish", "event"] = "publish"

    @field_validator("py")
    @classmethod
    def _absolute_file(cls, py: str) -> str:
        path = Path(py).expanduser().resolve()
        if not path.is_file() or path.suffix != ".py":
            raise ValueError(f"--py {py}: no such Python file")
        return str(path)

    @model_validator(mode="after")
    def _consistent(self) -> FunctionSpec:
        if not self.inputs and not self.topics_pattern:
            raise ValueError("give the input topics: --inputs or --topics-pattern")
        if self.inputs and self.topics_pattern:
            raise ValueError("--inputs and --topics-pattern exclude each other")
        module, _, name = self.classname.rpartition(".")
        if not name:
            raise ValueError(f"--classname {self.classname!r} names no class")
        if module and module.rpartition(".")[2] != Path(self.py).stem:
            raise ValueError(
                f"--classname {self.classname!r}: module {module!r} is not the file "
                f"{Path(self.py).name} (use {Path(self.py).stem}.{name} or {name})"
            )
        if self.topics_pattern and self.effectively_once and self.parallelism > 1:
            raise ValueError(
                "--topics-pattern with EFFECTIVELY_ONCE runs one instance (--parallelism 1): "
                "each input partition must stay with one instance"
            )
        if self.window is not None:
            self.window.validate()
        return self

    @property
    def fqfn(self) -> str:
        return f"{self.tenant}/{self.namespace}/{self.name}"

    @property
    def subscription(self) -> str:
        return self.subs_name or self.fqfn

    @property
    def dead_letters(self) -> str:
        first = self.inputs[0] if self.inputs else f"{self.tenant}-{self.namespace}"
        return self.dead_letter_topic or f"{first}-{self.name}-DLQ"

    @property
    def effectively_once(self) -> bool:
        return self.processing_guarantees == "EFFECTIVELY_ONCE"

    @property
    def window(self) -> WindowConfig | None:
        if self.window_length_count is None and self.window_length_duration_ms is None:
            return None
        return WindowConfig(
            window_length_count=self.window_length_count,
            sliding_interval_count=self.sliding_interval_count,
            window_length_duration_ms=self.window_length_duration_ms,
            sliding_interval_duration_ms=self.sliding_interval_duration_ms,
            max_lag_ms=self.max_lag_ms,
            timestamp=self.window_timestamp,
        )


def load_function(py: str, classname: str) -> Any:
    """The function object: an instance of the named class, or the module's plain function.

    The file's folder is on the import path while it loads, as on Pulsar's worker, so a function
    may import its neighbours."""
    path = Path(py)
    if not path.is_file():
        raise FileNotFoundError(f"function file {py} does not exist")
    attribute = classname.rpartition(".")[2]
    module = import_file(path, f"pulsar_function_{path.stem}")
    target = getattr(module, attribute, None)
    if target is None:
        defined = sorted(
            n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
        )
        raise AttributeError(f"{py} defines no {attribute!r} (it defines: {', '.join(defined)})")
    return target() if isinstance(target, type) else target
