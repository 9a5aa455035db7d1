"""Flow: raw files in the landing folder -> Flink -> Iceberg features + Pulsar + quarantine."""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow

from mlplatform.logs import configure_logging
from mlplatform.settings import get_settings
from tasks.namespace_slot import one_run_per_namespace
from tasks.preprocess import announce, run_preprocess


@flow(name="preprocess", log_prints=True)
def preprocess() -> dict:
    """Clean every file waiting in the landing folder with the PyFlink job."""
    settings = get_settings()
    configure_logging(settings)
    with one_run_per_namespace(settings):
        result = run_preprocess(settings)
    new_rows = announce(settings, result)
    print(f"preprocess: {result}; {new_rows} rows since the champion's training snapshot")
    return asdict(result)


if __name__ == "__main__":
    preprocess()
