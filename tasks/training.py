"""Prefect tasks around retraining, imported models and rollback, with their artifacts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from mlplatform.registry import model_registry
from mlplatform.settings import Settings
from mlplatform.training.external_model import ImportResult, import_model
from mlplatform.training.retrain import RetrainInProgress, RetrainResult, retrain


@dataclass(frozen=True)
class Skipped:
    """A retrain that did not train, and why."""

    reason: str


def confusion_matrix_markdown(matrix: list[list[int]], labels: list[str]) -> str:
    """The confusion matrix as a grid: rows are true classes, columns predicted ones."""
    lines = ["| true \\ predicted | " + " | ".join(labels) + " |"]
    lines.append("|---" * (len(labels) + 1) + "|")
    for label, row in zip(labels, matrix, strict=True):
        cells = [f"**{v}**" if i == labels.index(label) else str(v) for i, v in enumerate(row)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sample_line(result: RetrainResult) -> str:
    """Rows available and used: the training sample at a glance."""
    share = result.rows_used / result.rows_available if result.rows_available else 1.0
    return (
        f"Sample: **{result.rows_used:,} rows used of {result.rows_available:,} available** "
        f"({share:.1%}; stratified by label, seed {result.sample_seed}, taken before the split "
        f"into {result.training_rows:,} training and {result.holdout_rows:,} holdout rows)."
    )


def decision_markdown(settings: Settings, result: RetrainResult) -> str:
    """The decision artifact: verdict, reason, sample, confusion matrix and per-class scores."""
    m = result.best_metrics
    per_class = "\n".join(
        f"| {name} | {m['precision'][name]:.3f} | {m['recall'][name]:.3f} |"
        for name in settings.label_names
    )
    return (
        f"## Decision: {result.decision} version {result.best_version}\n\n{result.reason}\n\n"
        f"Snapshot `{result.snapshot_id}`; champion before: {result.champion_before}.\n\n"
        f"{sample_line(result)}\n\n"
        f"### Confusion matrix of version {result.best_version}\n\n"
        + confusion_matrix_markdown(m["confusion_matrix"], settings.label_names)
        + "\n\n### Per class\n\n| class | precision | recall |\n|---|---|---|\n"
        + per_class
    )


def publish_retrain_artifacts(settings: Settings, result: RetrainResult) -> None:
    create_table_artifact(
        key="retrain-candidates", table=result.candidates, description="Candidates on the holdout"
    )
    create_markdown_artifact(
        key="retrain-decision",
        markdown=decision_markdown(settings, result),
        description="Promotion decision",
    )
    if result.drift:
        create_table_artifact(
            key="retrain-drift", table=result.drift, description="PSI against the champion's data"
        )


@task(name="train-candidates-and-decide")
def train_and_decide(settings: Settings, snapshot_id: int | None = None) -> RetrainResult | Skipped:
    """Train the candidate grid on Ray, register every candidate, promote the best or not."""
    holder = f"retrain flow run {flow_run.name} ({flow_run.id})" if flow_run.id else "a retrain"
    try:
        result = retrain(settings, snapshot_id, holder=holder)
    except RetrainInProgress as busy:
        get_run_logger().warning("%s", busy)
        create_markdown_artifact(
            key="retrain-decision",
            markdown=f"## Decision: none, this run did not train\n\n{busy}\n",
            description="Promotion decision",
        )
        return Skipped(str(busy))
    publish_retrain_artifacts(settings, result)
    return result


@task(name="rollback-model")
def roll_back(settings: Settings, version: int) -> int:
    """Make an earlier model version the champion again."""
    return model_registry.rollback(settings, version)


@task(name="import-model-and-decide")
def import_external_model(
    settings: Settings,
    path: str,
    feature_order: list[str] | None = None,
    snapshot_id: int | None = None,
) -> ImportResult:
    """Check, score and register a model trained elsewhere; promote it or not, as retraining
    would (the decision as an artifact)."""
    result = import_model(settings, Path(path), feature_order, snapshot_id)
    champion = (
        f"v{result.champion_before}: {result.champion_score:.4f}"
        if result.champion_before is not None and result.champion_score is not None
        else "none"
    )
    create_markdown_artifact(
        key="import-decision",
        markdown=(
            f"## Decision: {result.decision} imported version {result.version}\n\n"
            f"{result.reason}\n\n| | |\n|---|---|\n| file | `{Path(path).name}` |\n"
            f"| inputs | {', '.join(result.feature_order)} |\n"
            f"| {settings.promotion_metric} on the holdout | "
            f"{result.metrics[settings.promotion_metric]:.4f} |\n"
            f"| champion before | {champion} |\n"
            f"| holdout | {result.holdout_rows:,} rows of snapshot {result.snapshot_id} |\n"
        ),
        description="Imported model: promotion decision",
    )
    return result
