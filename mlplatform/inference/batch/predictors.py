"""What batch inference runs beside its model stage (inference.batch.model_stage): the user's
preprocessing stage (CPU actors before the model stage), and separated mode's warm pool, a Ray
Serve deployment (BatchModel, autoscaling replicas, one application per model version) that stays
after a run and scales to no replica when idle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from ray import serve

from mlplatform.connectors.niceness import set_niceness
from mlplatform.dataset.prediction_record import REASON
from mlplatform.inference.batch.model_pool import in_label_order
from mlplatform.inference.batch.model_stage import feature_matrix, refusals, unit_by_unit
from mlplatform.inference.batch.units import ERROR
from mlplatform.inference.user_predictor import UserModel
from mlplatform.registry import model_registry
from mlplatform.registry.model_ref import ModelRef
from mlplatform.settings import Settings


class PreprocessStage:
    """Batch inference's preprocessing stage: the user's preprocessor over the rows to predict
    (valid keys, no error, within the dataset's rules), in CPU actors before the model stage.
    Refused rows get their reason here, from the features as they arrived."""

    def __init__(self, ref: ModelRef, key: str, s: Settings) -> None:
        self.ref, self.key, self.ranges = ref, key, s.dataset_spec.ranges
        self.model = UserModel(ref, None, s.preprocessor_class, s.predictor_options, s)

    def __call__(self, batch: pa.Table) -> pa.Table:
        features, nulls = feature_matrix(batch, self.ref.feature_order)
        reason = refusals(features, nulls, self.ref.feature_order, self.ranges)
        errors = batch[ERROR]
        todo = pc.and_(pc.is_valid(batch[self.key]), pc.equal(errors, ""))
        todo = pc.and_(todo, pc.is_null(reason)).to_numpy(zero_copy_only=False)
        try:
            if todo.any():
                features[todo] = self.model.preprocessed(features[todo])
        except Exception:  # the units that fail get the error, one unit at a time

            def preprocess_rows(rows: np.ndarray) -> None:
                features[rows] = self.model.preprocessed(features[rows])

            errors = unit_by_unit(batch, todo, preprocess_rows, "preprocess")
            batch = batch.set_column(batch.schema.get_field_index(ERROR), ERROR, errors)
        for i, name in enumerate(self.ref.feature_order):
            column = pa.array(features[:, i], pa.float64())
            batch = batch.set_column(batch.schema.get_field_index(name), name, column)
        return batch.append_column(REASON, reason)


@serve.deployment
class BatchModel:
    """separated mode: one pinned model version behind a deployment handle (no HTTP route)."""

    def __init__(
        self,
        ref: ModelRef,
        niceness: int | None = None,
        loader: Callable[[ModelRef], Any] | None = None,
    ) -> None:
        if niceness is not None:
            set_niceness(niceness)
        self.ref = ref
        self.model = (loader or model_registry.load_model)(ref)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities in label_names order."""
        return in_label_order(self.model, self.ref, features)


def batch_app_name(s: Settings, ref: ModelRef) -> str:
    """Versions of different registries share numbers; their artifacts' digests differ."""
    return f"{s.serve_app_name}-batch-v{ref.version}-{ref.sha256[:8]}"


def deploy_batch_model(
    s: Settings, ref: ModelRef, loader: Callable[[ModelRef], Any] | None = None
) -> str:
    """The model version's Serve application, separated mode's warm pool: the running one as
    it is, else deployed (autoscaling, down to no replica after pool_idle_s); its name.
    `loader` makes the model of the version (default: the registry's estimator)."""
    name = batch_app_name(s, ref)
    serve.start(http_options={"host": "127.0.0.1", "port": s.serve_port})
    running = serve.status().applications.get(name)
    if running is not None and running.status == "RUNNING":
        return name  # warm: a new deploy would replace its replicas
    deployment = BatchModel.options(
        autoscaling_config={
            "min_replicas": 0,
            "initial_replicas": max(1, s.serve_min_replicas),
            "max_replicas": max(1, s.serve_max_replicas),
            "target_ongoing_requests": 2,
            "upscale_delay_s": 0,
            "downscale_delay_s": s.pool_idle_s,
        },
        ray_actor_options={"num_cpus": s.serve_replica_cpus, "num_gpus": s.serve_replica_gpus},
    )
    serve.run(deployment.bind(ref, s.batch_niceness, loader), name=name, route_prefix=None)
    return name
