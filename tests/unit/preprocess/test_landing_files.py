"""mlplatform.preprocess.landing_files: claiming CSV, JSON-lines and Parquet files, the schemas
they declare, comparing them with the features table, and laying them out as the job's sources."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlplatform.dataset.spec import load_spec
from mlplatform.preprocess.landing_files import (
    Declared,
    arrow_type,
    claim,
    compare,
    declared_schema,
    parquet_to_json_lines,
    plan_sources,
)

pytestmark = pytest.mark.unit

IRIS = load_spec("iris")
HEADER = ",".join(IRIS.columns)
REQUIRED = {"event_id": "string", **{c: "double" for c in IRIS.feature_columns}, "label": "int"}


def _parquet(path: Path, **columns: pa.Array) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def test_claim_takes_every_format_and_leaves_the_rest(tmp_path: Path) -> None:
    for name in ("a.csv", "b.jsonl", "c.parquet", "d.json", "notes.txt"):
        (tmp_path / name).write_text("x")
    run = claim(tmp_path, "r1")
    assert run == tmp_path / "_inflight" / "r1"
    assert sorted(p.name for p in run.iterdir()) == ["a.csv", "b.jsonl", "c.parquet", "d.json"]
    assert (tmp_path / "notes.txt").exists()
    assert claim(tmp_path, "r2") is not None  # r1's folder, left behind, is taken over
    assert (tmp_path / "_inflight" / "r2" / "recovered-r1" / "a.csv").exists()
    assert claim(tmp_path / "empty", "r3") is None


def test_a_csv_header_declares_its_columns_and_new_ones_get_a_sampled_type(
    tmp_path: Path,
) -> None:
    path = tmp_path / "a.csv"
    path.write_text(f"{HEADER},ph,site\nk1,1,2,3,4,0,6.5,north\nk2,1,2,3,4,0,,south\n")
    declared = declared_schema(path, IRIS)
    assert declared == Declared(
        [*IRIS.columns, "ph", "site"], {"ph": "double", "site": "string"}, f"{HEADER},ph,site"
    )
    path.write_text("k1,1,2,3,4,0\n")  # no header line: the dataset's order
    assert declared_schema(path, IRIS) == Declared(IRIS.columns)
    assert declared_schema(tmp_path / "x.jsonl", IRIS) is None


def test_a_parquet_schema_declares_columns_and_types(tmp_path: Path) -> None:
    path = _parquet(
        tmp_path / "p.parquet",
        event_id=pa.array(["a"]),
        label=pa.array([1]),
        width=pa.array([1.5]),
        ok=pa.array([True]),
        when=pa.array([b"x"]),
    )
    declared = declared_schema(path, IRIS)
    assert declared.columns == ["event_id", "label", "width", "ok", "when"]
    assert declared.types == {
        "event_id": "string",
        "label": "long",
        "width": "double",
        "ok": "boolean",
        "when": "unsupported (binary)",
    }
    assert arrow_type(pa.float32()) == "double" and arrow_type(pa.large_string()) == "string"


def test_compare_names_each_column_and_change() -> None:
    declared = Declared(
        ["event_id", "sepal_length", "sepal_width", "petal_length", "label", "ph", "ph", "a b"],
        {"sepal_length": "string", "label": "long", "ph": "double", "site": "boolean"},
    )
    added, problems = compare(declared, REQUIRED, {"site": "string"})
    assert added == {"ph": "double"}
    assert problems == [
        "column 'a b' is not a plain name (^[A-Za-z_][A-Za-z0-9_]{0,127}$)",
        "column 'ph' appears twice",
        "drops required column 'petal_width' (double)",
        "changes column 'sepal_length' from double to string",
        "changes column 'site' from string to boolean",
    ]
    # Widening fits: integers into a double feature or the int label.
    ok = Declared(IRIS.columns, {"sepal_length": "long", "label": "long"})
    assert compare(ok, REQUIRED, {}) == ({}, [])


def test_parquet_rows_become_json_lines_with_non_finite_numbers_spelled(tmp_path: Path) -> None:
    path = _parquet(
        tmp_path / "p.parquet",
        event_id=pa.array(["a", "b", "c"]),
        x=pa.array([float("nan"), float("-inf"), None]),
    )
    target = tmp_path / "p.parquet.jsonl"
    assert parquet_to_json_lines(path, target) == 3
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert rows == [
        {"event_id": "a", "x": "NaN"},
        {"event_id": "b", "x": "-Infinity"},
        {"event_id": "c", "x": None},
    ]


def test_plan_groups_sources_adds_columns_and_rejects_misfits(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "recovered-old" / "csv-0").mkdir(parents=True)
    (run / "a.csv").write_text(f"{HEADER}\nk,1,2,3,4,0\n")
    (run / "recovered-old" / "csv-0" / "b.csv").write_text(f"{HEADER}\nk,1,2,3,4,0\n")
    (run / "c.csv").write_text(f"{HEADER},ph\nk,1,2,3,4,0,7\n")
    (run / "d.jsonl").write_text("{}\n")
    _parquet(
        run / "e.parquet",
        event_id=pa.array(["p"]),
        sepal_length=pa.array([1.0]),
        sepal_width=pa.array([1.0]),
        petal_length=pa.array([1.0]),
        petal_width=pa.array([1.0]),
        label=pa.array([1]),
        site=pa.array(["n"]),
    )
    (run / "f.parquet").write_text("not parquet")
    (run / "recovered-old" / "json").mkdir()
    (run / "recovered-old" / "json" / "x.parquet.jsonl").write_text("{}\n")  # made again
    plan = plan_sources(run, IRIS, REQUIRED, {})
    assert plan.added == {"ph": "double", "site": "string"}
    assert plan.added_by == {"ph": "c.csv", "site": "e.parquet"}
    assert list(plan.rejected) == [run / "f.parquet"]
    assert "cannot be read as parquet" in plan.rejected[run / "f.parquet"][0]
    assert plan.files == 5
    assert [(s["format"], Path(s["path"].removeprefix("file://")).name) for s in plan.sources] == [
        ("csv", "csv-0"),
        ("csv", "csv-1"),
        ("json", "json"),
    ]
    assert plan.sources[1]["columns"][-1] == "ph"
    assert sorted(p.name for p in (run / "csv-0").iterdir()) == [
        "a.csv",
        "recovered-old--csv-0--b.csv",
    ]
    assert sorted(p.name for p in (run / "json").iterdir()) == ["d.jsonl", "e.parquet.jsonl"]
    assert (run / "parquet" / "e.parquet").exists()
    assert not (run / "recovered-old" / "json" / "x.parquet.jsonl").exists()
