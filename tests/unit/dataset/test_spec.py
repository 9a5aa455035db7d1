"""Datasets by configuration: bundled specs, spec files, the settings they fill in, demo data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyiceberg.types import DoubleType, IntegerType

from mlplatform.connectors.iceberg_tables import features_schema
from mlplatform.dataset.spec import bundled_names, load_spec
from mlplatform.preprocess.batch import job_config
from mlplatform.sample_data.demo_rows import header, malformed_kinds, write_demo_raw
from mlplatform.settings import Settings

pytestmark = pytest.mark.unit


def _settings(tmp_path: Path, **kwargs: object) -> Settings:
    return Settings(_env_file=None, local_dir=tmp_path, **kwargs)


def test_iris_is_the_default_and_unchanged(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    assert s.dataset == "iris" and "wine" in bundled_names()
    assert s.key_column == "event_id" and s.label_column == "label"
    assert s.feature_columns == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    assert s.label_names == ["setosa", "versicolor", "virginica"]
    assert {(f.type, f.min, f.max) for f in s.dataset_spec.features} == {("double", 0.0, 20.0)}


def test_wine_fills_in_every_column_setting(tmp_path: Path) -> None:
    s = _settings(tmp_path, dataset="wine")
    assert (s.key_column, s.label_column) == ("sample_id", "cultivar")
    assert len(s.feature_columns) == 13 and s.feature_columns[0] == "alcohol"
    assert len(s.label_names) == 3
    ranges = {f.name: (f.type, f.min, f.max) for f in s.dataset_spec.features}
    assert ranges["proline"] == ("int", 100, 2500)  # a range of its own per column
    assert ranges["hue"] == ("double", 0.1, 3.0)
    schema = features_schema(s)
    assert schema.find_field("proline").field_type == IntegerType()
    assert schema.find_field("alcohol").field_type == DoubleType()
    assert [f.name for f in schema.fields][0] == "sample_id"
    cfg = job_config(s, tmp_path / "in", "job")
    assert cfg["key_column"] == "sample_id" and cfg["label_column"] == "cultivar"
    assert cfg["features"][12] == {"name": "proline", "type": "int", "min": 100, "max": 2500}


def test_dataset_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLP_DATASET", "wine")
    assert _settings(tmp_path).label_column == "cultivar"


def test_explicit_column_settings_override_the_spec(tmp_path: Path) -> None:
    s = _settings(tmp_path, feature_columns=["a", "b"], feature_max=3.5, label_names=["n", "y"])
    spec = s.dataset_spec
    assert [(f.name, f.min, f.max) for f in spec.features] == [("a", 0.0, 3.5), ("b", 0.0, 3.5)]
    assert spec.label_names == ("n", "y") and spec.key_column == "event_id"
    ranged = _settings(tmp_path, dataset="wine", feature_min=1.0, feature_max=9.0)
    assert {(f.min, f.max) for f in ranged.dataset_spec.features} == {(1.0, 9.0)}


def test_a_copy_with_another_dataset_is_refused(tmp_path: Path) -> None:
    copied = _settings(tmp_path).model_copy(update={"dataset": "wine"})
    with pytest.raises(ValueError, match=r"build Settings\(dataset=\.\.\.\)"):
        _ = copied.dataset_spec


def test_a_spec_file_by_path(tmp_path: Path) -> None:
    spec = {
        "name": "tiny",
        "key_column": "id",
        "label_column": "y",
        "label_names": ["a", "b"],
        "features": [
            {"name": "x", "min": -1, "max": 1},
            {"name": "n", "type": "int", "min": 0, "max": 9},
        ],
    }
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(spec))
    s = _settings(tmp_path, dataset=str(path))
    assert s.feature_columns == ["x", "n"] and header(s) == "id,x,n,y"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"features": [{"name": "x", "min": 2, "max": 1}]}, "min 2.0 must be below max 1.0"),
        ({"features": [{"name": "x y", "min": 0, "max": 1}]}, "String should match pattern"),
        ({"features": [{"name": "x", "type": "text", "min": 0, "max": 1}]}, "'double' or 'int'"),
        ({"label_column": "id"}, "column names used twice: id"),
        ({"label_names": ["only"]}, "at least 2 items"),
        ({"colour": "red"}, "Extra inputs are not permitted"),
        ({"derived": [{"name": "z", "expression": "x + q"}]}, "z uses q: only the dataset's"),
        ({"derived": [{"name": "z", "expression": "x; DROP"}]}, "'; DROP' is not allowed"),
        ({"derived": [{"name": "z", "expression": "UPPER(x)"}]}, "z uses UPPER"),
        ({"derived": [{"name": "x", "expression": "x * 2"}]}, "column names used twice: x"),
    ],
)
def test_a_bad_spec_file_is_refused_with_what_is_wrong(
    tmp_path: Path, change: dict, message: str
) -> None:
    spec = {
        "name": "bad",
        "key_column": "id",
        "label_column": "y",
        "label_names": ["a", "b"],
        "features": [{"name": "x", "min": 0, "max": 1}],
        **change,
    }
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(spec))
    load_spec.cache_clear()
    with pytest.raises(ValueError, match="dataset spec .*bad.json is not valid") as error:
        load_spec(str(path))
    assert message in str(error.value)


def test_an_unknown_dataset_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'nope' is neither a bundled dataset \(iris, wine\)"):
        _settings(tmp_path, dataset="nope")


def test_wine_demo_rows_are_typed_and_in_range(tmp_path: Path) -> None:
    s = _settings(tmp_path, dataset="wine")
    batch = write_demo_raw(s, n_rows=50, n_malformed=7, seed=2)
    lines = batch.path.read_text().splitlines()
    assert lines[0] == header(s) and len(lines) == 1 + 50 + 7
    spec = s.dataset_spec
    rows = [line.split(",") for line in lines[1:]]
    good = [fields for fields in rows if fields[0] and "-bad-" not in fields[0]]
    assert len(good) == 50
    for fields in good:
        assert len(fields) == 15 and int(fields[14]) in range(3)
        for value, feature in zip(fields[1:14], spec.features, strict=True):
            number = int(value) if feature.type == "int" else float(value)
            assert feature.min <= number <= feature.max, (feature.name, value)
    reasons = [reason for reason, _ in malformed_kinds(spec)]
    assert reasons == [
        "missing_fields",
        "not_a_number:malic_acid",
        "out_of_range:ash",
        "not_finite:alcohol",
        "out_of_range:cultivar",
        "missing_key:sample_id",
        "extra_fields",
    ]


def test_derived_features_are_sql_for_the_job_and_numpy_for_other_writers(
    tmp_path: Path,
) -> None:
    s = _settings(tmp_path)
    area, ratio = s.dataset_spec.derived
    assert (area.name, area.sql()) == (
        "petal_area",
        "CAST(`petal_length` * `petal_width` AS DOUBLE)",
    )
    assert ratio.sql() == "CAST(`sepal_length` / GREATEST ( `sepal_width` , 0.1 ) AS DOUBLE)"
    columns = {"petal_length": [1.0, 2.0], "petal_width": [3.0, 0.5]}
    assert area.evaluate(columns).tolist() == [3.0, 1.0]
    columns = {"sepal_length": [5.0, 6.0], "sepal_width": [0.0, 2.0]}
    assert ratio.evaluate(columns).tolist() == [50.0, 3.0]
    cfg = job_config(s, tmp_path / "in", "job")
    assert cfg["derived"] == [{"name": d.name, "sql": d.sql()} for d in (area, ratio)]
    schema = features_schema(s)  # written by the job after ingested_at, optional
    added = [f.name for f in schema.fields][6:]
    assert added == ["ingested_at", "event_time", "event_date", "petal_area", "sepal_ratio"]
