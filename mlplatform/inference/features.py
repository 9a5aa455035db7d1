"""The one parser of feature values, for both doors: HTTP requests and feature messages.

A row is a list in the model's feature order or an object of feature name -> number (a feature
message is such an object, with its key and other fields besides). A value must be a finite
number (booleans, strings, null, NaN and Infinity are refused) inside its feature's range in the
dataset spec (`ranges`, from `DatasetSpec.ranges`: the rule the Flink job checks too). A refusal
is an InvalidFeatures with a reason code (`not_number`, `out_of_range`, ...), the feature and the
row: its text says what was wrong and where ("row 3, feature 1 (sepal_width): 'x' is not a
number", the HTTP answer's detail) and its `reason` is the code with the value
(`not_number: sepal_width='x'`, the dead-letter topic's `reason` property).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

# Feature name -> (min, max), closed; a feature without an entry lies within float32's range.
Ranges = Mapping[str, tuple[float, float]]
FLOAT32_MAX = 3.4028234663852886e38


class InvalidFeatures(ValueError):
    """Feature values that cannot be predicted: what was wrong (`code`, `detail`) and where."""

    def __init__(
        self,
        code: str,
        detail: str,
        message: str,
        row: int | None = None,
        feature: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code, self.detail, self.row, self.feature = code, detail, row, feature

    @property
    def reason(self) -> str:
        """`code: detail`, e.g. `missing_feature: petal_width` (a dead letter's reason)."""
        return f"{self.code}: {self.detail}"


def within_float32(bounds: tuple[float, float] | None) -> tuple[float, float]:
    """A feature's range, cut to float32's: tree models compare in float32, and a larger value
    would fail the whole batch it is in (found by fuzzing)."""
    low, high = bounds or (-FLOAT32_MAX, FLOAT32_MAX)
    return max(low, -FLOAT32_MAX), min(high, FLOAT32_MAX)


def short(value: Any) -> str:
    """repr of a value, cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _where(row: int | None) -> str:
    return "" if row is None else f"row {row}: "


def parse_value(
    value: Any, row: int | None, index: int, name: str, ranges: Ranges | None = None
) -> float:
    """One feature value as a finite float inside its range."""
    place = f"{'' if row is None else f'row {row}, '}feature {index} ({name})"
    detail = f"{name}={short(value)}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        message = f"{place}: {short(value)} is not a number"
        raise InvalidFeatures("not_number", detail, message, row, name)
    try:
        number = float(value)
    except OverflowError:  # an integer beyond a float's range
        number = math.inf
    if not math.isfinite(number):
        message = f"{place}: {short(value)} is not a finite number (NaN and Infinity are refused)"
        raise InvalidFeatures("not_finite", detail, message, row, name)
    low, high = within_float32((ranges or {}).get(name))
    if not low <= number <= high:
        message = f"{place}: {short(value)} is outside the dataset's range [{low:g}, {high:g}]"
        raise InvalidFeatures("out_of_range", detail, message, row, name)
    return number


def parse_features(
    features: Any,
    feature_order: Sequence[str],
    row: int | None = None,
    others_allowed: bool = False,
    ranges: Ranges | None = None,
) -> list[float]:
    """One row, by position (the model's feature order) or by name, as floats in that order.
    `others_allowed`: names that are not features are ignored (a message's key, label, ...)
    rather than refused."""
    n, expected = len(feature_order), ", ".join(feature_order)
    if isinstance(features, list):
        if len(features) != n:
            message = f"{_where(row)}expected {n} features ({expected}), got {len(features)}"
            raise InvalidFeatures("wrong_count", f"{len(features)} of {n}", message, row)
        return [parse_value(v, row, j, feature_order[j], ranges) for j, v in enumerate(features)]
    if isinstance(features, Mapping):
        unknown = [] if others_allowed else [str(k) for k in features if k not in feature_order]
        if unknown:
            names = ", ".join(unknown)
            message = f"{_where(row)}unknown feature name(s) {names}; expected {expected}"
            raise InvalidFeatures("unknown_feature", names, message, row, unknown[0])
        missing = [name for name in feature_order if name not in features]
        if missing:
            names = ", ".join(missing)
            message = f"{_where(row)}missing feature(s) {names}; expected {expected}"
            raise InvalidFeatures("missing_feature", names, message, row, missing[0])
        return [
            parse_value(features[name], row, j, name, ranges)
            for j, name in enumerate(feature_order)
        ]
    what = "features" if row is None else f"row {row}"
    message = (
        f"{what}: expected a list of {n} numbers ({expected}) or an object of feature name to "
        f"number, got {short(features)}"
    )
    raise InvalidFeatures("not_a_row", f"a {type(features).__name__}", message, row)


def parse_message(
    payload: bytes, key: str, feature_order: Sequence[str], ranges: Ranges | None = None
) -> tuple[str, list]:
    """(key, features in the model's order) of one feature message: a JSON object with the key
    and every feature by name."""
    try:
        row = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError as error:
        detail = f"byte {error.start}"
        raise InvalidFeatures("not_utf8", detail, f"the message is not UTF-8 at {detail}") from None
    except json.JSONDecodeError as error:
        detail = f"{error.msg} at char {error.pos}"
        raise InvalidFeatures("not_json", detail, f"the message is not JSON: {detail}") from None
    if not isinstance(row, dict):
        detail = f"a JSON {type(row).__name__}"
        raise InvalidFeatures("not_object", detail, f"the message is {detail}, not an object")
    if row.get(key) in (None, ""):
        raise InvalidFeatures("missing_key", key, f"the message has no key ({key})")
    return str(row[key]), parse_features(row, feature_order, others_allowed=True, ranges=ranges)
