"""Prefect tasks around retraining and rollback, with their artifacts."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from mlplatform.registry import model_registry
from mlplatform.settings import Settings
from mlplatform.training.retrain import RetrainResult, retrain


def confusion_matrix_markdown(matrix: list[list[int]], labels: list[str]) -> str:
    """The confusion matrix as a grid: rows are true classes, columns predicted ones."""
    lines = ["| true \\ predicted | " + " | ".join(labels) + " |"]
    lines.append("|---" * (len(labels) + 1) + "|")
    for label, row in zip(labels, matrix, strict=True):
        cells = [f"**{v}**" if i == labels.index(label) else str(v) for i, v in enumerate(row)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def publish_retrain_artifacts(settings: Settings, result: RetrainResult) -> None:
    create_table_artifact(
        key="retrain-candidates", table=result.candidates, description="Candidates on the holdout"
    )
    m = result.best_metrics
    per_class = "\n".join(
        f"| {name} | {m['precision'][name]:.3f} | {m['recall'][name]:.3f} |"
        for name in settings.label_names
    )
    create_markdown_artifact(
        key="retrain-decision",
        markdown=(
            f"## Decision: {result.decision} version {result.best_version}\n\n{result.reason}\n\n"
            f"Snapshot `{result.snapshot_id}`, {result.training_rows} training rows, "
            f"{result.holdout_rows} holdout rows; champion before: {result.champion_before}.\n\n"
            f"### Confusion matrix of version {result.best_version}\n\n"
            + confusion_matrix_markdown(m["confusion_matrix"], settings.label_names)
            + "\n\n### Per class\n\n| class | precision | recall |\n|---|---|---|\n"
            + per_class
        ),
        description="Promotion decision",
    )
    if result.drift:
        create_table_artifact(
            key="retrain-drift", table=result.drift, description="PSI against the champion's data"
        )


@task(name="train-candidates-and-decide")
def train_and_decide(settings: Settings, snapshot_id: int | None = None) -> RetrainResult:
    """Train the candidate grid on Ray, register every candidate, promote the best or not."""
    result = retrain(settings, snapshot_id)
    publish_retrain_artifacts(settings, result)
    return result


@task(name="rollback-model")
def roll_back(settings: Settings, version: int) -> int:
    """Make an earlier model version the champion again."""
    return model_registry.rollback(settings, version)
