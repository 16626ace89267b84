"""SageMaker ``ParameterRanges`` for kmeans:1: the defaults, and validation as SageMaker does it.

The same dict is sent to ``create_hyper_parameter_tuning_job`` unchanged and drives the local
tuner (:mod:`training.tuning`).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from training.errors import HyperparameterError, TuningError
from training.hyperparameters import KMeansHyperparameters, parse_hyperparameters

OBJECTIVE_METRIC = "test:msd"

# The original proof of concept's search (it kept k = 10 static; TrainRequest.k carries that).
# A plain dict in boto3's ParameterRanges shape, so it can be sent to SageMaker unchanged.
DEFAULT_PARAMETER_RANGES: dict[str, Any] = {
    "IntegerParameterRanges": [
        {"Name": "extra_center_factor", "MinValue": "4", "MaxValue": "10", "ScalingType": "Auto"},
        {"Name": "mini_batch_size", "MinValue": "3000", "MaxValue": "15000", "ScalingType": "Auto"},
    ],
    "ContinuousParameterRanges": [],
    "CategoricalParameterRanges": [{"Name": "init_method", "Values": ["kmeans++", "random"]}],
}

_NUMERIC_KINDS = ("IntegerParameterRanges", "ContinuousParameterRanges")
RANGE_KINDS = (*_NUMERIC_KINDS, "CategoricalParameterRanges")
_SCALING_TYPES = ("Auto", "Linear", "Logarithmic", "ReverseLogarithmic")
# SageMaker limits [BOTO]: at most 30 ranges of each kind, 30 values per categorical range,
# 256 characters per value.
_MAX_RANGES = 30
_MAX_VALUES = 30
_MAX_VALUE_CHARS = 256
# Built-in algorithms only let a tuning job search the hyperparameters they mark tunable
# (IsTunable); for kmeans:1 these four (k-means-tuning.html). The value says which range kind
# fits: a categorical range works for any of them, as its values are checked one by one.
_TUNABLE = {
    "epochs": "IntegerParameterRanges",
    "extra_center_factor": "IntegerParameterRanges",
    "init_method": "CategoricalParameterRanges",
    "mini_batch_size": "IntegerParameterRanges",
}
_INTEGER = re.compile(r"-?[0-9]+")


@dataclass(frozen=True)
class ParameterRange:
    """One validated range: numbers in [low, high] or a list of categorical values.

    kmeans:1 has no continuous tunable, so a continuous range never passes the name checks:
    every range that reaches the sampler is integer or categorical.
    """

    kind: str
    name: str
    low: float = 0
    high: float = 0
    log: bool = False
    values: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        """Number of distinct values the range allows."""
        return len(self.values) if self.values else int(self.high) - int(self.low) + 1


def validate_parameter_ranges(ranges: Mapping[str, Any], static: Mapping[str, str]) -> None:
    """Check ParameterRanges as SageMaker would, and that every bound trains with ``static``.

    Raises TuningError naming the bad entry (e.g. ``IntegerParameterRanges[1] 'mini_batch_size'``).
    """
    parse_parameter_ranges(ranges, static)


def parse_parameter_ranges(
    ranges: Mapping[str, Any], static: Mapping[str, str]
) -> list[ParameterRange]:
    """Validate ParameterRanges (shape, then names, then values) into ParameterRange objects."""
    if not isinstance(ranges, Mapping):
        raise TuningError(f"ParameterRanges must be a mapping, got {type(ranges).__name__}")
    for kind in ranges:
        if kind == "AutoParameters":
            raise TuningError("ParameterRanges: AutoParameters (Autotune) is not supported locally")
        if kind not in RANGE_KINDS:
            raise TuningError(
                f"ParameterRanges: unknown key {kind!r}; expected {', '.join(RANGE_KINDS)}"
            )
    labelled: list[tuple[str, ParameterRange]] = []
    for kind in RANGE_KINDS:
        entries = ranges.get(kind, [])
        if not isinstance(entries, list | tuple):
            raise TuningError(f"{kind} must be a list of ranges, got {type(entries).__name__}")
        if len(entries) > _MAX_RANGES:
            raise TuningError(
                f"{kind}: {len(entries)} ranges, SageMaker allows at most {_MAX_RANGES}"
            )
        for index, entry in enumerate(entries):
            label = _label(kind, index, entry)
            labelled.append((label, _parse_entry(kind, label, entry)))
    if not labelled:
        raise TuningError("ParameterRanges: no hyperparameter to tune")
    _check_names(labelled, static)
    _check_values(labelled, static)
    return [r for _, r in labelled]


def _label(kind: str, index: int, entry: object) -> str:
    """How errors name an entry: ``Kind[i] 'name'``."""
    name = entry.get("Name") if isinstance(entry, Mapping) else None
    return f"{kind}[{index}] {name!r}" if isinstance(name, str) else f"{kind}[{index}]"


def _parse_entry(kind: str, label: str, entry: object) -> ParameterRange:
    """Check one entry's keys, bounds and scaling, independent of what it names."""
    numeric = kind in _NUMERIC_KINDS
    keys = ("Name", "MinValue", "MaxValue", "ScalingType") if numeric else ("Name", "Values")
    if not isinstance(entry, Mapping):
        raise TuningError(f"{label}: must be an object with keys {', '.join(keys)}")
    for key in entry:
        if key not in keys:
            raise TuningError(f"{label}: unknown key {key!r}; expected {', '.join(keys)}")
    for key in keys:
        if key not in entry and key != "ScalingType":
            raise TuningError(f"{label}: missing {key}")
    name = entry["Name"]
    if not isinstance(name, str) or not name:
        raise TuningError(f"{label}: Name must be a non-empty string")
    if not numeric:
        return ParameterRange(kind, name, values=_categorical_values(label, entry["Values"]))
    low = _bound(kind, label, "MinValue", entry["MinValue"])
    high = _bound(kind, label, "MaxValue", entry["MaxValue"])
    if low >= high:
        # SageMaker refuses single-point ranges too (aws/amazon-sagemaker-feedback#195).
        raise TuningError(f"{label}: MinValue {low:g} must be less than MaxValue {high:g}")
    scaling = entry.get("ScalingType", "Auto")
    if scaling not in _SCALING_TYPES:
        raise TuningError(
            f"{label}: ScalingType {scaling!r} is not one of {', '.join(_SCALING_TYPES)}"
        )
    if scaling == "Logarithmic" and low <= 0:
        raise TuningError(f"{label}: Logarithmic scaling needs MinValue > 0, got {low:g}")
    if scaling == "ReverseLogarithmic":
        if kind != "ContinuousParameterRanges":
            raise TuningError(f"{label}: ReverseLogarithmic scaling is for continuous ranges only")
        if not (low >= 0 and high < 1):
            raise TuningError(
                f"{label}: ReverseLogarithmic scaling needs 0 <= MinValue < MaxValue < 1"
            )
    # "Auto" is searched linearly: SageMaker does not document how it picks a scale.
    return ParameterRange(kind, name, low=low, high=high, log=scaling == "Logarithmic")


def _bound(kind: str, label: str, key: str, value: object) -> float:
    """A MinValue/MaxValue: a string holding an integer (integer ranges) or a finite number."""
    if not isinstance(value, str):
        raise TuningError(
            f'{label}: {key} must be a string such as "4" (SageMaker takes bounds as '
            f"strings), got {type(value).__name__} {value!r}"
        )
    if kind == "IntegerParameterRanges":
        if not _INTEGER.fullmatch(value):
            raise TuningError(f"{label}: {key} {value!r} is not an integer")
        return int(value)
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise TuningError(f"{label}: {key} {value!r} is not a finite number")
    return number


def _categorical_values(label: str, values: object) -> tuple[str, ...]:
    """Categorical Values: 1-30 distinct strings of at most 256 characters."""
    if not isinstance(values, list | tuple) or not values:
        raise TuningError(f"{label}: Values must be a non-empty list of strings")
    if len(values) > _MAX_VALUES:
        raise TuningError(f"{label}: {len(values)} Values, SageMaker allows at most {_MAX_VALUES}")
    seen: list[str] = []
    for value in values:
        if not isinstance(value, str) or not value or len(value) > _MAX_VALUE_CHARS:
            raise TuningError(
                f"{label}: value {value!r} must be a string of 1-{_MAX_VALUE_CHARS} characters"
            )
        if value in seen:
            raise TuningError(f"{label}: duplicate value {value!r}")
        seen.append(value)
    return tuple(seen)


def _check_names(labelled: Sequence[tuple[str, ParameterRange]], static: Mapping[str, str]) -> None:
    """Each range names a distinct, tunable, non-static hyperparameter of a fitting kind."""
    known = [f.name for f in fields(KMeansHyperparameters)]
    where: dict[str, str] = {}
    for label, r in labelled:
        if r.name in where:
            raise TuningError(f"{label}: {r.name!r} is already tuned by {where[r.name]}")
        where[r.name] = label
        if r.name in static:
            raise TuningError(f"{label}: {r.name!r} is also a static hyperparameter")
        if r.name not in known:
            close = difflib.get_close_matches(r.name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TuningError(f"{label}: unknown hyperparameter {r.name!r}{hint}")
        if r.name not in _TUNABLE:
            raise TuningError(
                f"{label}: {r.name!r} is not tunable in kmeans:1; tunable: {', '.join(_TUNABLE)}"
            )
        if r.kind not in ("CategoricalParameterRanges", _TUNABLE[r.name]):
            raise TuningError(f"{label}: {r.name!r} needs {_TUNABLE[r.name]}, not {r.kind}")


def _check_values(
    labelled: Sequence[tuple[str, ParameterRange]], static: Mapping[str, str]
) -> None:
    """Static hyperparameters train alone, and with every bound and categorical value."""
    try:
        parsed = parse_hyperparameters(static)
    except HyperparameterError as exc:
        raise TuningError(f"static hyperparameters: {exc}") from None
    if "msd" not in parsed.eval_metrics:
        raise TuningError(
            f'static hyperparameters: eval_metrics must include "msd" for the objective '
            f"{OBJECTIVE_METRIC}"
        )
    for label, r in labelled:
        candidates = r.values or (str(int(r.low)), str(int(r.high)))
        for value in candidates:
            try:
                parse_hyperparameters({**static, r.name: value})
            except HyperparameterError as exc:
                raise TuningError(f"{label}: value {value!r} is invalid: {exc.problem}") from None
