"""SageMaker kmeans:1 hyperparameters: defaults, validation like the container, and the string map.

The container merges the caller's ``string -> string`` map into its ``default-input.json`` and
checks the result against a JSON schema: an unknown key or a value outside the schema fails the
job before any data is read. :func:`parse_hyperparameters` does the same checks locally, so a map
that trains here also trains on SageMaker (reference §1, §1.1).
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, cast

from training.errors import HyperparameterError

InitMethod = Literal["random", "kmeans++"]
EvalMetric = Literal["msd", "ssd"]

INIT_METHODS: tuple[InitMethod, ...] = ("random", "kmeans++")
EVAL_METRICS: tuple[EvalMetric, ...] = ("msd", "ssd")
AUTO = "auto"
# What 'auto' evaluates to. One public container log shows both evaluated to 10 (k=8, 3,218 rows);
# the general formula is unpublished, so local mode documents 10/10 (reference §1.1).
AUTO_EXTRA_CENTER_FACTOR = 10
AUTO_LOCAL_LLOYD_NUM_TRIALS = 10

# The container's schema writes integers as a string `^([1-9][0-9]*)$` or a JSON integer.
_POSITIVE = re.compile(r"[1-9][0-9]*")
_NON_NEGATIVE = re.compile(r"0|[1-9][0-9]*")
_TRUE_VALUES = ("true", "True")


@dataclass(frozen=True)
class KMeansHyperparameters:
    """Validated kmeans:1 hyperparameters; ``None`` stands for ``"auto"``.

    Constructing one directly validates it exactly like :func:`parse_hyperparameters`.
    """

    k: int
    feature_dim: int
    mini_batch_size: int = 5000
    epochs: int = 1
    init_method: InitMethod = "random"
    extra_center_factor: int | None = None
    local_lloyd_init_method: InitMethod = "kmeans++"
    local_lloyd_max_iter: int = 300
    local_lloyd_num_trials: int | None = None
    local_lloyd_tol: float = 1e-4
    half_life_time_size: int = 0
    eval_metrics: tuple[EvalMetric, ...] = ("msd",)
    force_dense: bool = True

    def __post_init__(self) -> None:
        # One set of checks for both entry points; values are re-parsed, so a list given for
        # eval_metrics or an int for local_lloyd_tol is normalised to the declared type.
        for name, parse in _PARSERS.items():
            object.__setattr__(self, name, parse(name, getattr(self, name)))

    @property
    def center_factor(self) -> int:
        """extra_center_factor with 'auto' evaluated."""
        return self.extra_center_factor or AUTO_EXTRA_CENTER_FACTOR

    @property
    def num_trials(self) -> int:
        """local_lloyd_num_trials with 'auto' evaluated."""
        return self.local_lloyd_num_trials or AUTO_LOCAL_LLOYD_NUM_TRIALS

    def to_strings(self) -> dict[str, str]:
        """Return the SageMaker ``string -> string`` map (every key, defaults included)."""
        out: dict[str, str] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if value is None:
                out[field.name] = AUTO
            elif isinstance(value, bool):
                out[field.name] = "true" if value else "false"
            elif isinstance(value, tuple):
                out[field.name] = json.dumps(list(value))
            else:
                # repr(float) is the shortest string that parses back to the same float.
                out[field.name] = repr(value) if isinstance(value, float) else str(value)
        return out


def parse_hyperparameters(raw: Mapping[str, object]) -> KMeansHyperparameters:
    """Validate a SageMaker hyperparameter map (strings or JSON values) like kmeans:1 does."""
    for name in sorted(raw):
        if name.startswith("_"):
            continue  # internal keys (_tuning_objective_metric, _kvstore, ...) pass the schema
        if name not in _PARSERS:
            raise HyperparameterError(name, _unknown_key_problem(name))
    for name in ("k", "feature_dim"):
        if name not in raw:
            raise HyperparameterError(name, "required hyperparameter is missing")
    given = {name: _PARSERS[name](name, value) for name, value in raw.items() if name in _PARSERS}
    # Parsers return the declared field types; the cast only tells mypy so.
    return KMeansHyperparameters(**cast("dict[str, Any]", given))


def _unknown_key_problem(name: str) -> str:
    problem = "unknown hyperparameter (the kmeans:1 container rejects it)"
    close = difflib.get_close_matches(name, list(_PARSERS), n=1)
    if close:
        return f"{problem}; did you mean '{close[0]}'?"
    return f"{problem}; known: {', '.join(_PARSERS)}"


def _bad(name: str, value: object, expected: str) -> HyperparameterError:
    return HyperparameterError(name, f"{value!r} is not valid: expected {expected}")


def _integer(name: str, value: object, *, minimum: int) -> int:
    expected = f"an integer >= {minimum}"
    if isinstance(value, bool):
        raise _bad(name, value, expected)
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        pattern = _POSITIVE if minimum >= 1 else _NON_NEGATIVE
        if not pattern.fullmatch(value):
            raise _bad(name, value, expected)
        number = int(value)
    else:
        raise _bad(name, value, expected)
    if number < minimum:
        raise _bad(name, value, expected)
    return number


def _positive(name: str, value: object) -> int:
    return _integer(name, value, minimum=1)


def _non_negative(name: str, value: object) -> int:
    return _integer(name, value, minimum=0)


def _positive_or_auto(name: str, value: object) -> int | None:
    if value is None or value == AUTO:
        return None
    try:
        return _positive(name, value)
    except HyperparameterError:
        raise _bad(name, value, "an integer >= 1 or 'auto'") from None


def _init_method(name: str, value: object) -> InitMethod:
    if value not in INIT_METHODS:
        raise _bad(name, value, "one of 'random', 'kmeans++'")
    return value


def _tolerance(name: str, value: object) -> float:
    expected = "a number in [0, 1]"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _bad(name, value, expected)
    try:
        number = float(value)
    except ValueError:
        raise _bad(name, value, expected) from None
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise _bad(name, value, expected)
    return number


def _eval_metrics(name: str, value: object) -> tuple[EvalMetric, ...]:
    expected = 'a JSON list of "msd" and/or "ssd", e.g. ["msd", "ssd"]'
    items: object = value
    if isinstance(value, str):
        try:
            items = json.loads(value)
        except json.JSONDecodeError:
            raise _bad(name, value, expected) from None
    if not isinstance(items, list | tuple) or not items:
        raise _bad(name, value, expected)
    metrics: list[EvalMetric] = []
    for item in items:
        if item not in EVAL_METRICS:
            raise _bad(name, value, expected)
        if item not in metrics:
            metrics.append(cast("EvalMetric", item))
    return tuple(metrics)


def _force_dense(name: str, value: object) -> bool:
    # The container only accepts true; the SDK always sends "True" (reference §1).
    if value is True or value in _TRUE_VALUES:
        return True
    raise _bad(name, value, "'true' or 'True'")


_PARSERS = {
    "k": _positive,
    "feature_dim": _positive,
    "mini_batch_size": _positive,
    "epochs": _positive,
    "init_method": _init_method,
    "extra_center_factor": _positive_or_auto,
    "local_lloyd_init_method": _init_method,
    "local_lloyd_max_iter": _positive,
    "local_lloyd_num_trials": _positive_or_auto,
    "local_lloyd_tol": _tolerance,
    "half_life_time_size": _non_negative,
    "eval_metrics": _eval_metrics,
    "force_dense": _force_dense,
}
