"""Settings of the lake: the Iceberg catalog and tables, the landing folder and the dataset."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Self

from pydantic import BaseModel, Field, model_validator

from mlplatform.dataset.spec import DatasetSpec, FeatureSpec, load_spec

# The dataset that keeps the plain table, topic and landing names (the others get their own).
DEFAULT_DATASET = "iris"
# A model's name: letters, digits, '.', '_' and '-', as in a URL path or a topic name.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class LakeSettings(BaseModel):
    """Where the platform's tables live, and the dataset whose columns they hold."""

    if TYPE_CHECKING:  # from ServicesSettings
        local_dir: Path

        @property
        def state_dir(self) -> Path: ...

    # Iceberg: a SQL catalog shared by PyIceberg and Flink's JdbcCatalog.
    catalog_name: str = "lake"
    catalog_url: str | None = None  # SQLAlchemy URL; default: SQLite under local_dir
    warehouse: str | None = None  # default: file:// under local_dir
    namespace: str = "ml"
    features_table: str = "features"
    quarantine_table: str = "quarantine"
    predictions_table: str = "predictions"
    stream_predictions_table: str = "stream_predictions"
    # Per-key counts and means over tumbling event-time windows (flink: feature_window_s).
    feature_windows_table: str = "feature_windows"
    # Stream mode's rows per outcome per second, by run (batch runs report theirs in the artifact).
    preprocess_counts_table: str = "preprocess_counts"

    # Raw data landing folder read by the Flink job.
    landing_dir: Path | None = None

    # The dataset: a bundled spec by name (iris, wine) or the path of a JSON spec file
    # (mlplatform/dataset/spec.py): key, typed feature columns with per-column ranges, label and
    # classes. It fills in the column settings below; any of them set explicitly overrides
    # the spec (MLP_FEATURE_MIN/MAX then give every feature one range).
    dataset: str = DEFAULT_DATASET
    key_column: str = "event_id"
    feature_columns: list[str] = Field(
        default=["sepal_length", "sepal_width", "petal_length", "petal_width"]
    )
    feature_min: float = 0.0
    feature_max: float = 20.0
    label_column: str = "label"
    label_names: list[str] = Field(default=["setosa", "versicolor", "virginica"])
    # The registry's model that this platform trains, predicts with and serves: its versions,
    # champion and promotions are its own (mlplatform.registry). Default: the dataset's name.
    model_name: str | None = Field(default=None, pattern=MODEL_NAME_PATTERN)

    @model_validator(mode="after")
    def _columns_from_dataset(self) -> Self:
        spec = load_spec(self.dataset)
        filled = {
            "key_column": spec.key_column,
            "feature_columns": spec.feature_columns,
            "label_column": spec.label_column,
            "label_names": list(spec.label_names),
        }
        for name, value in filled.items():
            if name not in self.model_fields_set:
                self.__dict__[name] = value  # not marked as set: the spec stays the source
        return self

    @property
    def dataset_name(self) -> str:
        """The dataset's name, from its spec (MLP_DATASET may be a file's path)."""
        return load_spec(self.dataset).name

    @property
    def resolved_model_name(self) -> str:
        """The model this platform works on: MLP_MODEL_NAME, or the dataset's name."""
        return self.model_name or self.dataset_name

    @property
    def dataset_spec(self) -> DatasetSpec:
        """The dataset's spec with the column settings that were set explicitly applied."""
        # The key, label and classes by name; feature columns of their own get the global range
        # (feature_min..feature_max), as does every feature when only that range is set.
        spec = load_spec(self.dataset)
        explicit = self.model_fields_set
        low, high = self.feature_min, self.feature_max
        if self.feature_columns != spec.feature_columns:
            if "feature_columns" not in explicit:
                raise ValueError(
                    f"these settings' feature columns are not those of dataset {spec.name}: a "
                    "copy with another dataset does not fill them in again; build "
                    "Settings(dataset=...)"
                )
            features = tuple(FeatureSpec(name=n, min=low, max=high) for n in self.feature_columns)
            spec = spec.model_copy(update={"features": features})
        elif {"feature_min", "feature_max"} & explicit:
            spec = spec.with_global_range(low, high)
        return spec.model_copy(
            update={
                "key_column": self.key_column,
                "label_column": self.label_column,
                "label_names": tuple(self.label_names),
            }
        )

    @property
    def resolved_catalog_url(self) -> str:
        return self.catalog_url or f"sqlite:///{self.state_dir / 'iceberg_catalog.db'}"

    @property
    def resolved_warehouse(self) -> str:
        return self.warehouse or f"file://{self.local_dir / 'warehouse'}"

    @property
    def resolved_landing_dir(self) -> Path:
        """MLP_LANDING_DIR, or `landing` under local_dir (`landing-<dataset>` for a dataset
        other than the default one)."""
        if self.landing_dir is not None:
            return self.landing_dir
        name = self.dataset_name
        return self.local_dir / ("landing" if name == DEFAULT_DATASET else f"landing-{name}")

    def table_id(self, table: str) -> str:
        return f"{self.namespace}.{table}"
