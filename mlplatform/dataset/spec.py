"""Datasets by configuration: a spec names the key, the typed feature columns with their valid
ranges, and the label with its classes. One setting (`MLP_DATASET`) picks a bundled spec
(mlplatform/dataset/specs/<name>.json: iris, the default, or wine) or a spec file by path.

Everything downstream (the Flink job's validation, the Iceberg features table, training, batch
and stream inference, serving) reads the columns from the settings this spec fills in.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SPEC_DIR = Path(__file__).resolve().parent / "specs"
# Column names go into SQL (backtick-quoted), CSV headers and JSON keys: plain identifiers only.
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"


class FeatureSpec(BaseModel):
    """One feature column: its type and the closed range a valid value lies in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    type: Literal["double", "int"] = "double"
    min: float
    max: float

    @model_validator(mode="after")
    def _range_is_ordered(self) -> FeatureSpec:
        if not (math.isfinite(self.min) and math.isfinite(self.max)):
            raise ValueError(
                f"feature {self.name}: min {self.min} and max {self.max} must be finite numbers "
                "(the Flink job's SQL and every entry compare against them)"
            )
        if not self.min < self.max:
            raise ValueError(f"feature {self.name}: min {self.min} must be below max {self.max}")
        return self


# A derived feature's expression: numbers, feature names, + - * / and parentheses, and these
# functions (Flink SQL's, with the same meaning in any SQL engine).
FUNCTIONS = ("ABS", "SQRT", "LN", "LOG10", "EXP", "POWER", "LEAST", "GREATEST")
TOKEN = re.compile(
    r"\s*(?:(?P<number>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_]\w*)|(?P<op>[-+*/(),]))"
)


class DerivedSpec(BaseModel):
    """A feature computed from the others in the Flink job, e.g. petal_length * petal_width.
    Stored in the features table and on the features topic; the model's inputs stay the
    dataset's features."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    expression: str = Field(min_length=1, max_length=500)

    def _tokens(self) -> list[tuple[str, str]]:
        """(kind, text) of each token: number, name, function or op; a clear error for
        anything else in the expression."""
        tokens, position, text = [], 0, self.expression.rstrip()
        while position < len(text):
            match = TOKEN.match(text, position)
            if match is None:
                raise ValueError(
                    f"derived feature {self.name}: {text[position:]!r} is not allowed (numbers, "
                    f"feature names, + - * / ( ) and {', '.join(FUNCTIONS)} only)"
                )
            kind = match.lastgroup or "op"
            if kind == "name" and match[kind].upper() in FUNCTIONS:
                tokens.append(("function", match[kind].upper()))
            else:
                tokens.append((kind, match[kind]))
            position = match.end()
        return tokens

    def names(self) -> set[str]:
        """The column names the expression uses."""
        return {text for kind, text in self._tokens() if kind == "name"}

    def evaluate(self, columns: Mapping[str, Any]) -> Any:
        """The expression over arrays of the feature columns (numpy), for writers other than
        the Flink job: the same value the job's SQL gives."""
        import numpy as np

        def extreme(reduce: Any) -> Any:
            return lambda *xs: reduce.reduce(np.broadcast_arrays(*xs))

        functions = {
            "ABS": np.abs,
            "SQRT": np.sqrt,
            "LN": np.log,
            "LOG10": np.log10,
            "EXP": np.exp,
            "POWER": np.power,
            "LEAST": extreme(np.minimum),
            "GREATEST": extreme(np.maximum),
        }
        alias = {n: f"_{i}" for i, n in enumerate(sorted(self.names()))}
        names = {a: np.asarray(columns[n], dtype=float) for n, a in alias.items()}
        code = " ".join(alias.get(text, text) for _, text in self._tokens())
        # Only numbers, operators and the names above: the tokens were checked.
        return eval(code, {"__builtins__": {}}, {**functions, **names})  # noqa: S307

    def sql(self) -> str:
        """The expression as Flink SQL: column names quoted, the result a DOUBLE."""
        parts = [f"`{text}`" if kind == "name" else text for kind, text in self._tokens()]
        return f"CAST({' '.join(parts)} AS DOUBLE)"


class DatasetSpec(BaseModel):
    """A dataset's columns: key, features (in model input order) and label."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    key_column: str = Field(pattern=NAME_PATTERN)
    features: tuple[FeatureSpec, ...] = Field(min_length=1)
    label_column: str = Field(pattern=NAME_PATTERN)
    label_names: tuple[str, ...] = Field(min_length=2)
    derived: tuple[DerivedSpec, ...] = ()
    # Demo data: sklearn.datasets.<loader>() gives rows in the features' order.
    sklearn_loader: str | None = None

    @model_validator(mode="after")
    def _names_are_unique(self) -> DatasetSpec:
        names = [self.key_column, *self.feature_columns, self.label_column]
        names += [d.name for d in self.derived]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"column names used twice: {', '.join(repeated)}")
        for derived in self.derived:
            unknown = derived.names() - set(self.feature_columns)
            if unknown:
                raise ValueError(
                    f"derived feature {derived.name} uses {', '.join(sorted(unknown))}: "
                    "only the dataset's features can be used"
                )
        return self

    @property
    def feature_columns(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def columns(self) -> list[str]:
        """Every column of a raw row, in the canonical (CSV) order."""
        return [self.key_column, *self.feature_columns, self.label_column]

    @property
    def ranges(self) -> dict[str, tuple[float, float]]:
        """Feature name -> the closed range a valid value lies in: the rule every entry checks
        (the Flink job's `out_of_range`, HTTP, the stream, Pulsar Functions, batch inference)."""
        return {f.name: (f.min, f.max) for f in self.features}

    def with_global_range(self, low: float, high: float) -> DatasetSpec:
        """The same spec with one range for every feature (the MLP_FEATURE_MIN/MAX settings)."""
        features = tuple(f.model_copy(update={"min": low, "max": high}) for f in self.features)
        return self.model_copy(update={"features": features})


def bundled_names() -> list[str]:
    return sorted(p.stem for p in SPEC_DIR.glob("*.json"))


@lru_cache
def load_spec(ref: str) -> DatasetSpec:
    """A bundled dataset by name, or a spec file by path; a clear error for anything else."""
    path = SPEC_DIR / f"{ref}.json" if re.fullmatch(NAME_PATTERN, ref) else Path(ref)
    if not path.is_file():
        raise ValueError(
            f"MLP_DATASET={ref!r} is neither a bundled dataset ({', '.join(bundled_names())}) "
            "nor a readable spec file: give one of those names or a path to a JSON spec"
        )
    try:
        return DatasetSpec.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as error:
        raise ValueError(f"dataset spec {path} is not valid: {error}") from None
