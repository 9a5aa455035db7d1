"""Flow: raw files in the landing folder -> Flink -> Iceberg features + Pulsar + quarantine."""

from __future__ import annotations

from prefect import flow

from mlplatform.settings import get_settings
from tasks.preprocess import run_preprocess


@flow(name="preprocess", log_prints=True)
def preprocess() -> dict:
    """Clean every file waiting in the landing folder with the PyFlink job."""
    result = run_preprocess(get_settings())
    print(f"preprocess: {result}")
    return result.as_dict()


if __name__ == "__main__":
    preprocess()
