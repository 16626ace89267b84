"""Feature specs: which columns feed K-Means, and how raw values become a scaled vector.

A numeric field is transformed (optionally a signed log1p, so refunds and other negative
amounts work) and scaled: ``v = (t(x) - center) / spread``. A categorical field is one-hot
encoded over the categories seen in training; an unseen category gives an all-zero block and
is flagged, never guessed. :class:`FeatureFitter` learns centers, spreads and categories from
a stream of chunks.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, get_args, overload

import numpy as np
import numpy.typing as npt

from training.data import CsvSchema
from training.errors import SpecError

Transform: TypeAlias = Literal["none", "log1p"]
Scale: TypeAlias = Literal["standard", "robust", "none"]
FieldType: TypeAlias = Literal["numeric", "categorical"]

TRANSFORMS: tuple[str, ...] = get_args(Transform)
SCALES: tuple[str, ...] = get_args(Scale)
FIELD_TYPES: tuple[str, ...] = get_args(FieldType)

# Up to this many rows, categorical fields are one-hot encoded with plain loops.
_FEW_ROWS = 8
# Scaled values beyond this many spreads are refused: squared and summed over the fields, a
# larger one would overflow float64 distances (and no model learns anything from it).
MAX_SCALED = 1e100
# A fitted spread below this fraction of max(1, |centre|) is treated as zero.
_MIN_RELATIVE_SPREAD = 1e-12

_CONFIG_KEYS = {
    "numeric": ("name", "type", "transform", "scale"),
    "categorical": ("name", "type"),
}
_STORED_KEYS = {
    "numeric": ("name", "type", "transform", "scale", "center", "spread"),
    "categorical": ("name", "type", "categories"),
}


@dataclass(frozen=True)
class NumericField:
    """A number column: transformed, then scaled to ``(t(x) - center) / spread``."""

    name: str
    transform: Transform = "none"
    scale: Scale = "standard"
    center: float = 0.0
    spread: float = 1.0

    def __post_init__(self) -> None:
        _check_name(self.name)
        if self.transform not in TRANSFORMS:
            raise SpecError(
                f"field '{self.name}': unknown transform {self.transform!r}"
                f" (expected {_choices(TRANSFORMS)})"
            )
        if self.scale not in SCALES:
            raise SpecError(
                f"field '{self.name}': unknown scale {self.scale!r} (expected {_choices(SCALES)})"
            )
        for attr in ("center", "spread"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise SpecError(f"field '{self.name}': {attr} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise SpecError(f"field '{self.name}': {attr} must be finite, got {value!r}")
            object.__setattr__(self, attr, float(value))
        if self.spread <= 0.0:
            raise SpecError(f"field '{self.name}': spread must be > 0, got {self.spread!r}")


@dataclass(frozen=True)
class CategoricalField:
    """A text column, one-hot encoded over its (sorted) training categories."""

    name: str
    categories: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_name(self.name)
        categories = tuple(self.categories)
        for category in categories:
            if not isinstance(category, str) or not category:
                raise SpecError(
                    f"field '{self.name}': categories must be non-empty text, got {category!r}"
                )
        if len(set(categories)) != len(categories):
            duplicate = next(c for c in categories if categories.count(c) > 1)
            raise SpecError(f"field '{self.name}': duplicate category {duplicate!r}")
        object.__setattr__(self, "categories", categories)


Field: TypeAlias = NumericField | CategoricalField


@dataclass(frozen=True)
class Transformed:
    """A transformed batch: the K-Means input and, per categorical field, unseen-category rows."""

    X: npt.NDArray[np.float64]
    unseen: dict[str, npt.NDArray[np.bool_]]


@dataclass(frozen=True)
class _Plan:
    """Positions and parameters precomputed once, so transform is a few numpy calls.

    Numeric fields are held log1p-transformed first, so the transform works on a slice.
    """

    numeric: tuple[str, ...]
    numeric_at: npt.NDArray[np.intp]
    n_logged: int
    center: npt.NDArray[np.float64]
    spread: npt.NDArray[np.float64]
    categorical: tuple[str, ...]
    category_index: tuple[dict[str, int], ...]
    category_start: tuple[int, ...]
    dim: int
    slices: dict[str, slice]
    column_names: tuple[str, ...]


@dataclass(frozen=True)
class FeatureSpec:
    """The fields fed to K-Means, in order, with their fitted parameters."""

    fields: tuple[Field, ...]
    fitted: bool = False
    _plan: _Plan = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fields = tuple(self.fields)
        seen: set[str] = set()
        for f in fields:
            if not isinstance(f, NumericField | CategoricalField):
                raise SpecError(f"feature spec: not a field: {f!r}")
            if f.name in seen:
                raise SpecError(f"feature spec: duplicate field name '{f.name}'")
            seen.add(f.name)
        object.__setattr__(self, "fields", fields)
        object.__setattr__(self, "_plan", _make_plan(fields))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FeatureSpec:
        """An unfitted spec from a JSON spec file's content; SpecError naming any bad entry."""
        if not isinstance(config, Mapping):
            raise SpecError("feature spec must be an object with a 'fields' list")
        for key in config:
            if key != "fields":
                raise SpecError(f"feature spec: unknown key {key!r}{_suggest(key, ['fields'])}")
        entries = config.get("fields")
        if entries is None:
            raise SpecError("feature spec: missing 'fields' list")
        if not isinstance(entries, list | tuple):
            raise SpecError(f"feature spec: 'fields' must be a list, got {_type(entries)}")
        if not entries:
            raise SpecError("feature spec: 'fields' is empty")
        fields: list[Field] = []
        first_at: dict[str, int] = {}
        for i, entry in enumerate(entries):
            f = _field_from_config(i, entry)
            if f.name in first_at:
                raise SpecError(
                    f"feature spec fields[{i}]: duplicate field name '{f.name}'"
                    f" (also fields[{first_at[f.name]}])"
                )
            first_at[f.name] = i
            fields.append(f)
        return cls(tuple(fields))

    @classmethod
    def default_for(cls, schema: CsvSchema) -> FeatureSpec:
        """An unfitted spec using every schema column: numeric standardised, categorical one-hot."""
        return cls(
            tuple(NumericField(name) for name in schema.numeric)
            + tuple(CategoricalField(name) for name in schema.categorical)
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        """A spec from :meth:`to_dict` output (e.g. a bundle's manifest); SpecError if malformed."""
        if not isinstance(data, Mapping):
            raise SpecError(f"stored feature spec must be an object, got {_type(data)}")
        unknown = sorted(set(data) - {"fields", "fitted"})
        if unknown:
            raise SpecError(f"stored feature spec: unknown key {unknown[0]!r}")
        entries, fitted = data.get("fields"), data.get("fitted")
        if not isinstance(entries, list | tuple):
            raise SpecError(f"stored feature spec: 'fields' must be a list, got {_type(entries)}")
        if not isinstance(fitted, bool):
            raise SpecError(f"stored feature spec: 'fitted' must be true or false, got {fitted!r}")
        fields = tuple(_field_from_dict(i, entry) for i, entry in enumerate(entries))
        try:
            return cls(fields, fitted=fitted)
        except SpecError as exc:
            raise SpecError(f"stored {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; :meth:`from_dict` gives back an equal spec."""
        fields: list[dict[str, Any]] = []
        for f in self.fields:
            if isinstance(f, NumericField):
                fields.append(
                    {
                        "name": f.name,
                        "type": "numeric",
                        "transform": f.transform,
                        "scale": f.scale,
                        "center": f.center,
                        "spread": f.spread,
                    }
                )
            else:
                fields.append(
                    {"name": f.name, "type": "categorical", "categories": list(f.categories)}
                )
        return {"fields": fields, "fitted": self.fitted}

    def csv_schema(self) -> CsvSchema:
        """The CSV columns this spec reads."""
        return CsvSchema(
            numeric=tuple(f.name for f in self.fields if isinstance(f, NumericField)),
            categorical=tuple(f.name for f in self.fields if isinstance(f, CategoricalField)),
        )

    @property
    def field_names(self) -> tuple[str, ...]:
        """Field names in order."""
        return tuple(f.name for f in self.fields)

    @property
    def feature_dim(self) -> int:
        """Width of the transformed vector."""
        return self._plan.dim

    @property
    def column_names(self) -> list[str]:
        """One name per vector column: the field name, or ``name=category`` for one-hot."""
        return list(self._plan.column_names)

    @property
    def field_slices(self) -> dict[str, slice]:
        """The vector columns of each field."""
        return dict(self._plan.slices)

    def field(self, name: str) -> Field:
        """The field called ``name``; SpecError if there is none."""
        for f in self.fields:
            if f.name == name:
                return f
        raise SpecError(f"feature spec has no field '{name}'{_suggest(name, self.field_names)}")

    def transform(self, columns: Mapping[str, Any]) -> Transformed:
        """Turn raw columns (one array-like per field, extra keys ignored) into vectors."""
        if not self.fitted:
            raise SpecError("feature spec is not fitted (fit it with FeatureFitter first)")
        if not self.fields:
            raise SpecError("feature spec has no fields")
        plan = self._plan
        numbers = [_values(columns, name) for name in plan.numeric]
        texts = [_values(columns, name) for name in plan.categorical]
        n = len(numbers[0]) if numbers else len(texts[0])
        for name, values in zip(plan.numeric + plan.categorical, numbers + texts, strict=True):
            if len(values) != n:
                raise SpecError(f"field '{name}' has {len(values)} values, expected {n}")
        X = np.zeros((n, plan.dim), dtype=np.float64)
        if numbers:
            raw = np.empty((n, len(numbers)), dtype=np.float64)
            for j, values in enumerate(numbers):
                try:
                    raw[:, j] = values
                except (TypeError, ValueError):
                    raise SpecError(f"field '{plan.numeric[j]}': values must be numbers") from None
            if not np.isfinite(raw).all():
                row, j = np.argwhere(~np.isfinite(raw))[0]
                raise SpecError(
                    f"field '{plan.numeric[j]}': value {raw[row, j]} at index {row} is not finite",
                    field=plan.numeric[j],
                    index=int(row),
                    detail=f"value {raw[row, j]} is not finite",
                )
            if plan.n_logged:
                _signed_log1p(raw[:, : plan.n_logged])
            with np.errstate(over="ignore", invalid="ignore"):  # refused just below
                scaled = (raw - plan.center) / plan.spread
            if not (np.abs(scaled) <= MAX_SCALED).all():
                row, j = np.argwhere(~(np.abs(scaled) <= MAX_SCALED))[0]
                value = numbers[j][row]  # as given: raw was transformed in place
                detail = (
                    f"value {value} is out of range (more than {MAX_SCALED:g} spreads from the "
                    "centre: its distance would overflow)"
                )
                raise SpecError(
                    f"field '{plan.numeric[j]}' at index {row}: {detail}",
                    field=plan.numeric[j],
                    index=int(row),
                    detail=detail,
                )
            X[:, plan.numeric_at] = scaled
        unseen: dict[str, npt.NDArray[np.bool_]] = {}
        if texts and n <= _FEW_ROWS:
            # Scoring one transaction: plain loops beat building index arrays.
            flat = X.reshape(-1)
            for name, index, start, values in zip(
                plan.categorical, plan.category_index, plan.category_start, texts, strict=True
            ):
                found = _codes(index, values)
                for row, code in enumerate(found):
                    if code >= 0:
                        flat[row * plan.dim + start + code] = 1.0
                unseen[name] = np.array([code < 0 for code in found], dtype=np.bool_)
        elif texts:
            codes = np.empty((len(texts), n), dtype=np.intp)
            for i, (index, values) in enumerate(zip(plan.category_index, texts, strict=True)):
                codes[i] = _code_array(index, values, n)
            seen = codes >= 0
            rows = np.nonzero(seen)[1]
            starts = np.array(plan.category_start, dtype=np.intp)[:, np.newaxis]
            X[rows, (codes + starts)[seen]] = 1.0
            for i, name in enumerate(plan.categorical):
                unseen[name] = ~seen[i]
        return Transformed(X=X, unseen=unseen)

    @overload
    def raw_numeric(self, name: str, value: float) -> float: ...

    @overload
    def raw_numeric(
        self, name: str, value: npt.NDArray[np.floating[Any]]
    ) -> npt.NDArray[np.float64]: ...

    def raw_numeric(
        self, name: str, value: float | npt.NDArray[np.floating[Any]]
    ) -> float | npt.NDArray[np.float64]:
        """Undo scale and transform of numeric field ``name``: vector value(s) to raw units."""
        f = self.field(name)
        if not isinstance(f, NumericField):
            raise SpecError(f"field '{name}' is categorical, not numeric")
        t = np.asarray(value, dtype=np.float64) * f.spread + f.center
        if f.transform == "log1p":
            with np.errstate(over="ignore"):  # far outside the data: inf is the honest answer
                t = np.sign(t) * np.expm1(np.abs(t))
        if isinstance(value, np.ndarray):
            return t
        return float(t)

    def typical_values(self, centroid: npt.ArrayLike) -> dict[str, float | str]:
        """A centroid in raw units: numeric fields inverted, categorical as the top category."""
        c = np.asarray(centroid, dtype=np.float64).reshape(-1)
        if c.shape != (self.feature_dim,):
            raise SpecError(f"centroid has {c.size} values, the feature spec {self.feature_dim}")
        typical: dict[str, float | str] = {}
        for f in self.fields:
            block = c[self._plan.slices[f.name]]
            if isinstance(f, NumericField):
                typical[f.name] = self.raw_numeric(f.name, float(block[0]))
            else:
                typical[f.name] = f.categories[int(np.argmax(block))] if f.categories else ""
        return typical


class FeatureFitter:
    """Learn a spec's centers, spreads and categories from a stream of column chunks.

    Standard scaling uses exact streaming moments (chunk means and squared deviations merged
    with Chan's formula); robust scaling uses the median and IQR of a uniform reservoir sample
    of ``reservoir_size`` rows (exact while the data fits). The reservoir draws one random
    number per row past the first ``reservoir_size``, so the fit does not depend on how the
    rows were chunked.
    """

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        reservoir_size: int = 100_000,
        seed: int = 0,
        max_categories: int = 1_000,
    ) -> None:
        if reservoir_size < 1:
            raise ValueError(f"reservoir_size must be >= 1, got {reservoir_size}")
        self.spec = spec
        self.max_categories = max_categories
        self._rows = 0
        numeric = [f for f in spec.fields if isinstance(f, NumericField)]
        self._numeric = tuple(f.name for f in numeric)
        self._logged = np.array(
            [j for j, f in enumerate(numeric) if f.transform == "log1p"], dtype=np.intp
        )
        self._standard = np.array(
            [j for j, f in enumerate(numeric) if f.scale == "standard"], dtype=np.intp
        )
        self._robust = np.array(
            [j for j, f in enumerate(numeric) if f.scale == "robust"], dtype=np.intp
        )
        width = len(numeric)
        self._mean = np.zeros(width)
        self._m2 = np.zeros(width)
        self._low = np.full(width, np.inf)
        self._high = np.full(width, -np.inf)
        self._reservoir = np.empty((reservoir_size, self._robust.size))
        self._rng = np.random.default_rng(seed)
        self._categories: dict[str, set[str]] = {
            f.name: set() for f in spec.fields if isinstance(f, CategoricalField)
        }

    def update(self, columns: Mapping[str, Any]) -> None:
        """Add a chunk of rows (one array-like per field; extra keys are ignored)."""
        lengths: dict[str, int] = {}
        parts: list[npt.NDArray[np.float64]] = []
        for name in self._numeric:
            try:
                part = np.asarray(_values(columns, name), dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                raise SpecError(f"field '{name}': values must be numbers") from None
            if not np.isfinite(part).all():
                raise SpecError(f"field '{name}': values must be finite numbers")
            parts.append(part)
            lengths[name] = len(part)
        texts = {name: _values(columns, name) for name in self._categories}
        lengths.update((name, len(values)) for name, values in texts.items())
        n = _common_length(lengths)
        if n == 0:
            return
        if parts:
            numeric = np.column_stack(parts)
            if self._logged.size:
                part = numeric[:, self._logged]
                _signed_log1p(part)
                numeric[:, self._logged] = part
            self._add_moments(numeric)
            if self._robust.size:
                self._add_to_reservoir(numeric[:, self._robust])
        for name, values in texts.items():
            self._add_categories(name, values)
        self._rows += n

    def finish(self) -> FeatureSpec:
        """The fitted spec; SpecError if no rows were seen."""
        if self._rows == 0:
            raise SpecError("cannot fit the feature spec on zero rows")
        centers = np.zeros(len(self._numeric))
        spreads = np.ones(len(self._numeric))
        if self._standard.size:
            s = self._standard
            with np.errstate(over="ignore", invalid="ignore"):
                std = np.sqrt(self._m2[s] / self._rows)
            centers[s] = self._mean[s]
            spreads[s] = std
        if self._robust.size:
            sample = self._reservoir[: min(self._rows, len(self._reservoir))]
            low, median, high = np.percentile(sample, [25.0, 50.0, 75.0], axis=0)
            centers[self._robust] = median
            spreads[self._robust] = high - low
        constant = self._low == self._high
        standard = np.zeros(len(centers), dtype=np.bool_)
        standard[self._standard] = True
        # A constant column's mean is its value, exactly (summing can be off by an ulp).
        centers = np.where(constant & standard, self._low, centers)
        spreads[constant] = 1.0
        fields: list[Field] = []
        numeric_at = {name: j for j, name in enumerate(self._numeric)}
        for f in self.spec.fields:
            if isinstance(f, NumericField):
                j = numeric_at[f.name]
                if not (math.isfinite(centers[j]) and math.isfinite(spreads[j])):
                    raise SpecError(f"field '{f.name}': values too large to scale")
                # A zero (or vanishing, e.g. a denormal IQR) spread would blow every other
                # value up to infinity: such a column is scaled as if constant.
                usable = spreads[j] > _MIN_RELATIVE_SPREAD * max(1.0, abs(float(centers[j])))
                spread = float(spreads[j]) if usable else 1.0
                fields.append(NumericField(f.name, f.transform, f.scale, float(centers[j]), spread))
            else:
                fields.append(CategoricalField(f.name, tuple(sorted(self._categories[f.name]))))
        return FeatureSpec(tuple(fields), fitted=True)

    def _add_moments(self, values: npt.NDArray[np.float64]) -> None:
        """Merge a chunk's mean and squared deviations into the running ones (Chan et al.)."""
        m = values.shape[0]
        with np.errstate(over="ignore", invalid="ignore"):
            mean = values.mean(axis=0)
            m2 = ((values - mean) ** 2).sum(axis=0)
            total = self._rows + m
            delta = mean - self._mean
            self._mean = self._mean + delta * (m / total)
            self._m2 = self._m2 + m2 + delta**2 * (self._rows * m / total)
        self._low = np.minimum(self._low, values.min(axis=0))
        self._high = np.maximum(self._high, values.max(axis=0))

    def _add_to_reservoir(self, values: npt.NDArray[np.float64]) -> None:
        """Reservoir sampling (Algorithm R), vectorised over a chunk."""
        size = len(self._reservoir)
        start = self._rows
        fill = max(0, min(len(values), size - start))
        self._reservoir[start : start + fill] = values[:fill]
        rest = values[fill:]
        if not len(rest):
            return
        seen = np.arange(start + fill, start + len(values), dtype=np.float64) + 1.0
        slots = (self._rng.random(len(rest)) * seen).astype(np.int64)  # uniform in [0, i]
        hit = np.flatnonzero(slots < size)
        if hit.size:
            # Several rows may land on one slot: the last one wins, as in the serial algorithm.
            reversed_slots = slots[hit][::-1]
            target, first = np.unique(reversed_slots, return_index=True)
            self._reservoir[target] = rest[hit[::-1][first]]

    def _add_categories(self, name: str, values: Iterable[Any]) -> None:
        """Record the distinct values of a categorical field."""
        known = self._categories[name]
        new = set(values) - known
        if not new:
            return
        for value in list(new):
            if value is None or value == "":
                raise SpecError(f"field '{name}': missing category value")
            if not isinstance(value, str):
                new.discard(value)
                new.add(str(value))
        known |= new
        if len(known) > self.max_categories:
            raise SpecError(
                f"field '{name}': more than {self.max_categories} distinct categories"
                " (an id or a timestamp? make it numeric or leave it out)"
            )


def _make_plan(fields: tuple[Field, ...]) -> _Plan:
    """Precompute vector positions and scaling arrays for ``fields``."""
    logged: list[tuple[str, int, float, float]] = []
    plain: list[tuple[str, int, float, float]] = []
    categorical: list[CategoricalField] = []
    starts: list[int] = []
    slices: dict[str, slice] = {}
    names: list[str] = []
    at = 0
    for f in fields:
        if isinstance(f, NumericField):
            (logged if f.transform == "log1p" else plain).append((f.name, at, f.center, f.spread))
            slices[f.name] = slice(at, at + 1)
            names.append(f.name)
            at += 1
        else:
            categorical.append(f)
            starts.append(at)
            slices[f.name] = slice(at, at + len(f.categories))
            names.extend(f"{f.name}={c}" for c in f.categories)
            at += len(f.categories)
    numeric = logged + plain
    return _Plan(
        numeric=tuple(name for name, _, _, _ in numeric),
        numeric_at=np.array([position for _, position, _, _ in numeric], dtype=np.intp),
        n_logged=len(logged),
        center=np.array([center for _, _, center, _ in numeric], dtype=np.float64),
        spread=np.array([spread for _, _, _, spread in numeric], dtype=np.float64),
        categorical=tuple(f.name for f in categorical),
        category_index=tuple({c: i for i, c in enumerate(f.categories)} for f in categorical),
        category_start=tuple(starts),
        dim=at,
        slices=slices,
        column_names=tuple(names),
    )


def _signed_log1p(values: npt.NDArray[np.float64]) -> None:
    """``sign(x) * log1p(|x|)`` in place: log scale for amounts that may be negative."""
    sign = np.sign(values)
    np.abs(values, out=values)
    np.log1p(values, out=values)
    values *= sign


def _codes(index: dict[str, int], values: Iterable[Any]) -> list[int]:
    """One-hot positions of categories, -1 where unseen."""
    get = index.get
    codes = [get(value, -1) for value in values]
    if -1 in codes:
        # Not text (an int from JSON, say): compare as text before calling it unseen.
        codes = [get(v if isinstance(v, str) else str(v), -1) for v in values]
    return codes


def _code_array(index: dict[str, int], values: Iterable[Any], n: int) -> npt.NDArray[np.intp]:
    """:func:`_codes` as an array, built without an intermediate list (batch path)."""
    codes = np.fromiter(map(index.get, values, itertools.repeat(-1, n)), dtype=np.intp, count=n)
    if (codes < 0).any():
        codes = np.array(_codes(index, values), dtype=np.intp)
    return codes


def _field_from_config(i: int, entry: Any) -> Field:
    """One field of a JSON spec file, validated."""
    where = f"feature spec fields[{i}]"
    if not isinstance(entry, Mapping):
        raise SpecError(f"{where}: expected an object, got {_type(entry)}")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise SpecError(f"{where}: 'name' must be a non-empty string, got {name!r}")
    where = f"{where} ('{name}')"
    kind = entry.get("type")
    if kind not in FIELD_TYPES:
        raise SpecError(
            f"{where}: unknown type {kind!r} (expected {_choices(FIELD_TYPES)})"
            f"{_suggest(kind, FIELD_TYPES)}"
        )
    allowed = _CONFIG_KEYS[kind]
    for key in entry:
        if key not in allowed:
            raise SpecError(
                f"{where}: unknown key {key!r} for a {kind} field{_suggest(key, allowed)}"
            )
    if kind == "categorical":
        return CategoricalField(name)
    transform = entry.get("transform", "none")
    if transform not in TRANSFORMS:
        raise SpecError(
            f"{where}: unknown transform {transform!r} (expected {_choices(TRANSFORMS)})"
        )
    scale = entry.get("scale", "standard")
    if scale not in SCALES:
        raise SpecError(f"{where}: unknown scale {scale!r} (expected {_choices(SCALES)})")
    return NumericField(name, transform=transform, scale=scale)


def _field_from_dict(i: int, entry: Any) -> Field:
    """One stored (fitted) field, validated key by key."""
    where = f"stored feature spec fields[{i}]"
    if not isinstance(entry, Mapping):
        raise SpecError(f"{where}: expected an object, got {_type(entry)}")
    kind = entry.get("type")
    if kind not in FIELD_TYPES:
        raise SpecError(f"{where}: unknown type {kind!r}")
    expected = _STORED_KEYS[kind]
    missing = [key for key in expected if key not in entry]
    if missing:
        raise SpecError(f"{where}: missing key {missing[0]!r}")
    extra = [key for key in entry if key not in expected]
    if extra:
        raise SpecError(f"{where}: unknown key {extra[0]!r}")
    name = entry["name"]
    if not isinstance(name, str):
        raise SpecError(f"{where}: 'name' must be a string, got {name!r}")
    try:
        if kind == "categorical":
            categories = entry["categories"]
            if not isinstance(categories, list | tuple):
                raise SpecError(f"field '{name}': 'categories' must be a list")
            return CategoricalField(name, tuple(categories))
        return NumericField(
            name, entry["transform"], entry["scale"], entry["center"], entry["spread"]
        )
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None


def _values(columns: Mapping[str, Any], name: str) -> Any:
    """A field's column as a 1-d sequence; SpecError naming the field if it is absent."""
    try:
        values = columns[name]
    except KeyError:
        raise SpecError(f"field '{name}' is missing from the input columns") from None
    if isinstance(values, np.ndarray):
        return values.reshape(1) if values.ndim == 0 else values
    if isinstance(values, str | bytes) or not hasattr(values, "__len__"):
        return [values]  # a single value
    return values


def _common_length(lengths: Mapping[str, int]) -> int:
    """The length all columns share (0 if none); SpecError naming a field that differs."""
    expected = next(iter(lengths.values()), 0)
    for name, length in lengths.items():
        if length != expected:
            raise SpecError(f"field '{name}' has {length} values, expected {expected}")
    return expected


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name.strip():
        raise SpecError(f"field name must be non-empty text, got {name!r}")


def _choices(options: Iterable[str]) -> str:
    """``'a', 'b' or 'c'`` for an error message."""
    quoted = [repr(o) for o in options]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _suggest(word: object, options: Iterable[str]) -> str:
    """``; did you mean 'x'?`` when ``word`` is close to one of ``options``."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(options), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _type(value: object) -> str:
    """A JSON-ish type name for an error message."""
    names: dict[type, str] = {dict: "an object", list: "a list", str: "a string"}
    return names.get(type(value), type(value).__name__)
