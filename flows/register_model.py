"""Flow: import a model trained elsewhere (skops or ONNX) as a candidate, promoted by the
retraining rule when it is not worse than the champion. What `mlp models register` does."""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow

from mlplatform.logs import configure_logging
from mlplatform.settings import get_settings
from tasks.training import import_external_model


@flow(name="register-model", log_prints=True)
def register_model(
    path: str | None = None,
    feature_order: list[str] | None = None,
    snapshot_id: int | None = None,
    model: str | None = None,
) -> dict:
    """Check a skops or ONNX file against the dataset, score it on the holdout, register it, decide.

    Args:
        path: the skops or ONNX (.onnx) file, as the worker sees it; required.
        feature_order: its input columns; default: as it was fitted, else the dataset's order.
        snapshot_id: score it on this features snapshot; default: the latest.
        model: the registry's model by name; default: MLP_MODEL_NAME, else the dataset's name.
    """
    if not path:
        raise ValueError("give the model file's path (parameter path), e.g. /models/m.skops")
    s = get_settings().for_model(model)
    configure_logging(s)
    result = import_external_model(s, path, feature_order, snapshot_id)
    print(f"register-model: {result.decision} version {result.version}: {result.reason}")
    return asdict(result)
