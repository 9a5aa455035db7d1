"""The model registry: versions, their metrics and lineage, and SHA-256-verified artifacts.

Every version belongs to a model by name (`Settings.resolved_model_name`: MLP_MODEL_NAME, or
the dataset's name); the champion, promotions, rollbacks and listings are per model, so models
of several datasets share one registry without meeting. Version numbers are unique across the
registry: a version number names one model's version. Versions from before models had names
(revision 0005) are given the name of the first model that opens the registry.
"""

from __future__ import annotations

import hashlib
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from checkpoints.database import get_engine
from checkpoints.registry_tables import ModelVersion, Promotion
from mlplatform.registry.model_ref import ModelRef
from mlplatform.registry.onnx_model import OnnxModel
from mlplatform.settings import Settings

T = TypeVar("T", ModelVersion, Promotion)

# skops loads only the types it is told to trust; we trust scikit-learn's and numpy's own.
TRUSTED_TYPE_PREFIXES = ("sklearn.", "numpy.")


class ModelIntegrityError(RuntimeError):
    """An artifact's bytes do not match its recorded SHA-256, or it holds untrusted types."""


_NAMED: set[str] = set()  # database URLs whose unnamed versions have a model's name


def _registry(s: Settings) -> Session:
    """A session on the registry, after its versions from before model names got this model's
    name (once per database and process; later openers find none left)."""
    url = s.resolved_database_url
    engine = get_engine(url)
    if url not in _NAMED:
        name = s.resolved_model_name
        with Session(engine) as session, session.begin():
            for table in (ModelVersion, Promotion):
                session.execute(
                    update(table).where(table.model_name.is_(None)).values(model_name=name)
                )
        _NAMED.add(url)
    return Session(engine, expire_on_commit=False)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def register(s: Settings, model: Any, **record: Any) -> ModelVersion:
    """Save the artifact under model_dir (skops; an OnnxModel: its ONNX file), then record it
    with its SHA-256 as a candidate."""
    import skops.io  # here: importing it imports all of scikit-learn, seconds at every start

    s.model_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC)
    onnx = isinstance(model, OnnxModel)
    path = s.model_dir / f"model-{stamp:%Y%m%dT%H%M%S%f}.{'onnx' if onnx else 'skops'}"
    if onnx:
        path.write_bytes(model.data)
    else:
        skops.io.dump(model, path)
    row = ModelVersion(
        model_name=s.resolved_model_name,
        dataset=s.dataset,
        created_at=stamp,
        artifact_path=str(path),
        sha256=sha256_of(path),
        stage="candidate",
        **record,
    )
    with _registry(s) as session:
        session.add(row)
        session.commit()
    return row


def _champion_version(session: Session, model: str) -> int | None:
    return session.scalar(
        select(ModelVersion.version).where(
            ModelVersion.model_name == model, ModelVersion.stage == "champion"
        )
    )


def _own_version(session: Session, model: str, version: int) -> ModelVersion:
    """Version `version` of `model`, or a LookupError that says whose it is."""
    row = session.get(ModelVersion, version)
    if row is None:
        raise LookupError(f"the model registry has no version {version}")
    if row.model_name != model:
        raise LookupError(
            f"model version {version} belongs to model {row.model_name!r}, not {model!r}: "
            f"name its model (--model {row.model_name}, MLP_MODEL_NAME) or one of {model!r}'s "
            "versions"
        )
    return row


def _set_champion(session: Session, model: str, version: int) -> int | None:
    _own_version(session, model, version)
    previous = _champion_version(session, model)
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.model_name == model, ModelVersion.stage == "champion")
        .values(stage="archived")
    )
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.version == version)
        .values(stage="champion", promoted_at=datetime.now(UTC))
    )
    return previous


def record_decision(s: Settings, action: str, version: int, reason: str) -> None:
    """Record a decision on a version of this model; 'promote' and 'rollback' also make
    `version` its champion."""
    model = s.resolved_model_name
    with _registry(s) as session, session.begin():
        if action in ("promote", "rollback"):
            previous = _set_champion(session, model, version)
        else:
            previous = _champion_version(session, model)
        session.add(
            Promotion(
                model_name=model,
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
    model = s.resolved_model_name
    with _registry(s) as session:
        if version is None:
            current = _champion_version(session, model)
            version = session.scalar(
                select(Promotion.previous_champion)
                .where(Promotion.model_name == model)
                .where(Promotion.action == "promote", Promotion.version == current)
                .where(Promotion.previous_champion.is_not(None))
                .where(Promotion.previous_champion != current)
                .order_by(Promotion.id.desc())
            )
            if version is None:
                raise LookupError("no earlier champion to roll back to; name a version")
    record_decision(s, "rollback", version, f"rollback to version {version}")
    return version


def _of_model(s: Settings, table: type[T], oldest_first: Any) -> list[T]:
    with _registry(s) as session:
        query = select(table).where(table.model_name == s.resolved_model_name)
        return list(session.scalars(query.order_by(oldest_first)))


def list_versions(s: Settings) -> list[ModelVersion]:
    """This model's versions, oldest first."""
    return _of_model(s, ModelVersion, ModelVersion.version)


def list_decisions(s: Settings) -> list[Promotion]:
    """This model's decisions, oldest first."""
    return _of_model(s, Promotion, Promotion.id)


def list_models(s: Settings) -> dict[str, int | None]:
    """Every model in the registry, by name, with its champion's version (None: none yet)."""
    with _registry(s) as session:
        names = session.scalars(select(ModelVersion.model_name).distinct()).all()
        return {name: _champion_version(session, name) for name in sorted(n for n in names if n)}


def get_version(s: Settings, version: int | None = None) -> ModelVersion:
    """A pinned version of this model, or its champion when version is None."""
    model = s.resolved_model_name
    with _registry(s) as session:
        if version is not None:
            return _own_version(session, model, version)
        row = session.scalars(
            select(ModelVersion).where(
                ModelVersion.model_name == model, ModelVersion.stage == "champion"
            )
        ).first()
    if row is None:
        raise LookupError(
            f"the model registry has no champion of model {model!r}; run the retrain flow "
            "first (or name another model: MLP_MODEL_NAME, --model)"
        )
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
    """Load an artifact only after its bytes match the registered SHA-256 and, for skops, every
    type in it comes from scikit-learn or numpy (an ONNX file holds no code: onnx_model.py)."""
    path = Path(ref.artifact_path)
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != ref.sha256:
        raise ModelIntegrityError(
            f"model version {ref.version}: {path} has SHA-256 {actual}, but the registry "
            f"recorded {ref.sha256}. Refusing to load it; retrain or restore the artifact."
        )
    what = f"model version {ref.version}: {path}"
    if path.suffix == ".onnx":
        return OnnxModel(data, what)
    return load_trusted(data, what, "retrain to replace it")


def load_trusted(data: bytes, what: str, remedy: str) -> Any:
    """A skops artifact's model, loaded only when every type in it comes from scikit-learn or
    numpy; `what` names it in the errors, `remedy` says what to do about a broken file."""
    import skops.io

    try:
        untrusted = skops.io.get_untrusted_types(data=data)
    except zipfile.BadZipFile as error:
        raise ModelIntegrityError(f"{what} is not a skops artifact; {remedy}") from error
    refused = [t for t in untrusted if not t.startswith(TRUSTED_TYPE_PREFIXES)]
    if refused:
        raise ModelIntegrityError(
            f"{what} holds types outside scikit-learn and numpy ({', '.join(refused)}); "
            "refusing to load it."
        )
    return skops.io.loads(data, trusted=untrusted)
