"""The model registry: versions, their metrics and lineage, and SHA-256-verified artifacts."""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from checkpoints.database import get_engine
from checkpoints.registry_tables import ModelVersion, Promotion
from mlplatform.settings import Settings

# skops loads only the types it is told to trust; we trust scikit-learn's and numpy's own.
TRUSTED_TYPE_PREFIXES = ("sklearn.", "numpy.")


class ModelIntegrityError(RuntimeError):
    """An artifact's bytes do not match its recorded SHA-256, or it holds untrusted types."""


@dataclass(frozen=True)
class ModelRef:
    """What a worker needs to load one model version safely."""

    version: int
    artifact_path: str
    sha256: str
    feature_order: tuple[str, ...]
    label_names: tuple[str, ...]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def register(s: Settings, model: Any, **record: Any) -> ModelVersion:
    """Save the artifact under model_dir, then record it with its SHA-256 as a candidate."""
    import skops.io  # here: importing it imports all of scikit-learn, seconds at every start

    s.model_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC)
    path = s.model_dir / f"model-{stamp:%Y%m%dT%H%M%S%f}.skops"
    skops.io.dump(model, path)
    row = ModelVersion(
        created_at=stamp,
        artifact_path=str(path),
        sha256=sha256_of(path),
        stage="candidate",
        **record,
    )
    with Session(get_engine(s.resolved_database_url), expire_on_commit=False) as session:
        session.add(row)
        session.commit()
    return row


def _champion_version(session: Session) -> int | None:
    return session.scalar(select(ModelVersion.version).where(ModelVersion.stage == "champion"))


def _set_champion(session: Session, version: int) -> int | None:
    if session.get(ModelVersion, version) is None:
        raise LookupError(f"model version {version} is not in the registry")
    previous = _champion_version(session)
    session.execute(
        update(ModelVersion).where(ModelVersion.stage == "champion").values(stage="archived")
    )
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.version == version)
        .values(stage="champion", promoted_at=datetime.now(UTC))
    )
    return previous


def record_decision(s: Settings, action: str, version: int, reason: str) -> None:
    """Record a decision; 'promote' and 'rollback' also make `version` the champion."""
    with Session(get_engine(s.resolved_database_url)) as session, session.begin():
        if action in ("promote", "rollback"):
            previous = _set_champion(session, version)
        else:
            previous = _champion_version(session)
        session.add(
            Promotion(
                at=datetime.now(UTC),
                action=action,
                version=version,
                previous_champion=previous,
                reason=reason,
            )
        )


def promote(s: Settings, version: int, reason: str = "promoted by hand") -> None:
    """Make one version the champion; the previous champion is archived."""
    record_decision(s, "promote", version, reason)


def rollback(s: Settings, version: int | None = None) -> int:
    """Make an earlier version the champion again: `version`, or the one the current champion
    replaced when it was promoted (so repeated rollbacks keep stepping back)."""
    with Session(get_engine(s.resolved_database_url)) as session:
        if version is None:
            current = _champion_version(session)
            version = session.scalar(
                select(Promotion.previous_champion)
                .where(Promotion.action == "promote", Promotion.version == current)
                .where(Promotion.previous_champion.is_not(None))
                .where(Promotion.previous_champion != current)
                .order_by(Promotion.id.desc())
            )
            if version is None:
                raise LookupError("no earlier champion to roll back to; name a version")
    record_decision(s, "rollback", version, f"rollback to version {version}")
    return version


def list_versions(s: Settings) -> list[ModelVersion]:
    with Session(get_engine(s.resolved_database_url), expire_on_commit=False) as session:
        return list(session.scalars(select(ModelVersion).order_by(ModelVersion.version)))


def list_decisions(s: Settings) -> list[Promotion]:
    with Session(get_engine(s.resolved_database_url), expire_on_commit=False) as session:
        return list(session.scalars(select(Promotion).order_by(Promotion.id)))


def get_version(s: Settings, version: int | None = None) -> ModelVersion:
    """A pinned version, or the champion when version is None."""
    with Session(get_engine(s.resolved_database_url), expire_on_commit=False) as session:
        if version is not None:
            row = session.get(ModelVersion, version)
        else:
            row = session.scalars(
                select(ModelVersion).where(ModelVersion.stage == "champion")
            ).first()
    if row is None:
        wanted = f"version {version}" if version is not None else "champion model"
        raise LookupError(f"the model registry has no {wanted}; run the retrain flow first")
    return row


def model_ref(row: ModelVersion) -> ModelRef:
    return ModelRef(
        version=row.version,
        artifact_path=row.artifact_path,
        sha256=row.sha256,
        feature_order=tuple(row.feature_order),
        label_names=tuple(row.label_names),
    )


def load_model(ref: ModelRef) -> Any:
    """Load an artifact only after its bytes match the registered SHA-256 and every type in it
    comes from scikit-learn or numpy."""
    path = Path(ref.artifact_path)
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != ref.sha256:
        raise ModelIntegrityError(
            f"model version {ref.version}: {path} has SHA-256 {actual}, but the registry "
            f"recorded {ref.sha256}. Refusing to load it; retrain or restore the artifact."
        )
    import skops.io

    try:
        untrusted = skops.io.get_untrusted_types(data=data)
    except zipfile.BadZipFile as error:
        raise ModelIntegrityError(
            f"model version {ref.version}: {path} is not a skops artifact; retrain to replace it"
        ) from error
    refused = [t for t in untrusted if not t.startswith(TRUSTED_TYPE_PREFIXES)]
    if refused:
        raise ModelIntegrityError(
            f"model version {ref.version}: {path} holds types outside scikit-learn and numpy "
            f"({', '.join(refused)}); refusing to load it."
        )
    return skops.io.loads(data, trusted=untrusted)
