"""The model registry's tables: every model version with its metrics, lineage and artifact hash,
and every promotion decision (the logic is in mlplatform.registry). Versions and decisions belong
to a model by name (revision 0005); version numbers are unique across models."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from checkpoints.database import Base


class ModelVersion(Base):
    __tablename__ = "model_versions"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # None only for versions from before revision 0005, until the registry gives them a name.
    model_name: Mapped[str | None] = mapped_column(String(128), index=True, nullable=True)
    dataset: Mapped[str | None] = mapped_column(String(256), nullable=True)  # lineage
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    family: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    training_table: Mapped[str] = mapped_column(String(256))
    training_snapshot_id: Mapped[int] = mapped_column(BigInteger)
    training_rows: Mapped[int] = mapped_column(Integer)
    # The bounded training sample (revision 0003; None for versions trained before it): rows of
    # the snapshot, rows sampled (train + holdout, of which training_rows trained), the seed.
    rows_available: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    rows_used: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    sample_seed: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    feature_order: Mapped[list[str]] = mapped_column(JSON)
    label_names: Mapped[list[str]] = mapped_column(JSON)
    artifact_path: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    stage: Mapped[str] = mapped_column(String(16), default="candidate")
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Promotion(Base):
    """Every promotion decision, rollback and rejection, with its reason."""

    __tablename__ = "model_promotions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str | None] = mapped_column(String(128), index=True, nullable=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    action: Mapped[str] = mapped_column(String(16))  # promote | reject | rollback
    version: Mapped[int] = mapped_column(Integer)
    previous_champion: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reason: Mapped[str] = mapped_column(Text)
