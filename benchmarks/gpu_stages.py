"""Check and benchmark for a GPU machine: batch inference with a CPU preprocessing stage followed
by a model stage on a GPU, against the same stages all on CPUs, on the same data in one run.

Usage (on a machine with an NVIDIA GPU, the project installed, PyTorch or CuPy in its venv):
    python -m benchmarks.gpu_stages [--rows N]
Self-contained: a private local Ray, and a lake, registry and checkpoint store in a temporary
folder (no service of `make up` is needed). The registry's model is a StandardScaler ->
LogisticRegression pipeline; examples/predictors/split_pipeline.py runs the scaler as the
preprocessing stage and the linear model as the model stage, with `actor_num_gpus=1` and
`device: gpu` (its actors refuse to start without a GPU, so a model stage that did not get one
fails the run). Passes when both runs predict every row and agree with the pipeline's own
`predict_proba`; exits 2 with a message where Ray sees no GPU. Prints rows/s of each and saves
JSON to benchmarks/results/gpu_stages.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pyiceberg.expressions import EqualTo
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mlplatform.connectors.iceberg_tables import load_table
from mlplatform.connectors.ray_runtime import connect
from mlplatform.inference.batch.runner import run_batch_inference
from mlplatform.registry import model_registry
from mlplatform.sample_data.synthetic_features import append_features
from mlplatform.settings import Settings

RESULTS = Path(__file__).parent / "results"
STAGES = "examples/predictors/split_pipeline.py"


def champion(s: Settings) -> object:
    """A scaler + logistic regression fitted on the lake's features, registered and promoted."""
    features = load_table(s, s.features_table).scan().to_pandas()
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    pipeline.fit(features[s.feature_columns].to_numpy(), features[s.label_column])
    version = model_registry.register(
        s,
        pipeline,
        family="external",
        params={},
        metrics={},
        training_table=s.table_id(s.features_table),
        training_snapshot_id=0,
        training_rows=len(features),
        feature_order=s.feature_columns,
        label_names=s.label_names,
    )
    model_registry.promote(s, version.version)
    return pipeline


def checked_run(s: Settings, pipeline: object, what: str) -> dict[str, float]:
    """One batch run; its rows/s, after checking every row against the pipeline's own answer."""
    started = time.perf_counter()
    result = run_batch_inference(s)
    seconds = time.perf_counter() - started
    table = load_table(s, s.predictions_table)
    found = table.scan(row_filter=EqualTo("run_id", result.run_id)).to_pandas()
    features = load_table(s, s.features_table).scan().to_pandas().set_index(s.key_column)
    x = features.loc[found[s.key_column], s.feature_columns].to_numpy()
    expected = pipeline.predict_proba(x)  # type: ignore[attr-defined]
    if result.predicted_rows != result.input_rows or len(found) != result.input_rows:
        raise SystemExit(f"{what}: {result.predicted_rows} of {result.input_rows} rows predicted")
    np.testing.assert_allclose(np.stack(found["probabilities"]), expected, atol=1e-6)
    return {"seconds": seconds, "rows_per_s": result.input_rows / seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpu-stages-") as folder:
        base = Settings(
            _env_file=None,
            local_dir=Path(folder),
            database_url=f"sqlite:///{folder}/platform.db",
            ray_address="local",
            preprocessor_class=f"{STAGES}:Scale",
            predictor_class=f"{STAGES}:LinearModel",
            actor_pool_max=1,
        )
        connect(base)
        import ray  # after mlplatform: its import keeps Ray on loopback

        gpus = ray.cluster_resources().get("GPU", 0)
        if not gpus:
            print("Ray sees no GPU on this machine: nothing to check here", file=sys.stderr)
            raise SystemExit(2)
        append_features(base, args.rows, seed=5)
        pipeline = champion(base)
        gpu = base.model_copy(update={"actor_num_gpus": 1, "predictor_options": {"device": "gpu"}})
        cpu = base.model_copy(update={"predictor_options": {"device": "cpu"}})
        # Each run is a job of its own: the model stage's device is not part of a job's key,
        # so the second run gets its own predictions table.
        cpu = cpu.model_copy(update={"predictions_table": "predictions_cpu"})
        results = {
            "rows": args.rows,
            "gpus": gpus,
            "gpu_model_stage": checked_run(gpu, pipeline, "GPU model stage"),
            "cpu_model_stage": checked_run(cpu, pipeline, "CPU model stage"),
        }
    results["gpu_over_cpu"] = (
        results["gpu_model_stage"]["rows_per_s"] / results["cpu_model_stage"]["rows_per_s"]
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gpu_stages.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
