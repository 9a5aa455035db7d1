"""A model version as a worker gets it: light to import (dataclasses only), because every Ray
worker that receives one imports this module to unpickle it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelRef:
    """What a worker needs to load one model version safely."""

    version: int
    artifact_path: str
    sha256: str
    feature_order: tuple[str, ...]
    label_names: tuple[str, ...]
