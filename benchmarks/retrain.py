"""Benchmark: the candidate grid trained in parallel on Ray against the same grid trained
sequentially in one process, on the same data, in one run.

Usage: python -m benchmarks.retrain [--rows N] [--repeats R]
Prints a JSON summary and saves it to benchmarks/results/retrain.json. Ray start-up is not
counted (a long-running cluster is the normal case); the first Ray round warms the workers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_iris

from mlplatform.connectors.ray_runtime import connect
from mlplatform.settings import get_settings
from mlplatform.training.candidates import train_grid_on_ray, train_grid_sequential

RESULTS = Path(__file__).parent / "results"


def noisy_iris(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    iris = load_iris()
    picks = rng.integers(0, len(iris.target), size=rows)
    return iris.data[picks] + rng.normal(0, 0.3, size=(rows, 4)), iris.target[picks]


def timed(fn, *args) -> tuple[float, list]:
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def ray_cpus() -> float | None:
    import ray  # after mlplatform: its import keeps Ray on loopback (see mlplatform/__init__)

    return ray.cluster_resources().get("CPU")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    s = get_settings()
    train = noisy_iris(args.rows, seed=1)
    holdout = noisy_iris(args.rows // 4, seed=2)
    grid_args = (s.candidate_grid, s.seed, train, holdout, s.label_names)
    connect(s)
    train_grid_on_ray(*grid_args)  # warm-up: workers started, imports done
    sequential, parallel = [], []
    for _ in range(args.repeats):
        seconds, seq_models = timed(train_grid_sequential, *grid_args)
        sequential.append(seconds)
        seconds, ray_models = timed(train_grid_on_ray, *grid_args)
        parallel.append(seconds)
        assert [m.metrics for m in seq_models] == [m.metrics for m in ray_models]
    summary = {
        "benchmark": "retrain candidate grid",
        "rows_train": args.rows,
        "rows_holdout": args.rows // 4,
        "candidates": len(s.candidate_grid),
        "ray_cpus": ray_cpus(),
        "repeats": args.repeats,
        "sequential_s_median": round(statistics.median(sequential), 3),
        "ray_parallel_s_median": round(statistics.median(parallel), 3),
        "speedup_sequential_over_ray": round(
            statistics.median(sequential) / statistics.median(parallel), 2
        ),
        "same_metrics": True,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "retrain.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
