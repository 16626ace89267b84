"""One transaction scored in plain Python: the verdict of ``score_columns`` + ``verdicts``.

For a single row numpy's fixed cost per call (around a microsecond, a few dozen calls)
outweighs the arithmetic, so ``POST /score`` uses per-model tables instead: each cluster's
centre on every numeric field, and for every categorical field the part of the squared
distance each category adds in each cluster (``Σ_{j≠p} c_j² + (1 - c_p)²`` for category
``p``, ``Σ c_j²`` for an unseen one). A row's squared distance to a cluster is then a few
subtractions and lookups, and its per-field parts — the reasons — fall out on the way.

Same semantics as the array path (nearest cluster, ties to the lowest index, thresholds,
rare patterns, reason ranking); distances agree to rounding, since this sums the parts
directly where the array path expands ``||x||² - 2x·c + ||c||²``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from service.scoring import Direction, Reason, ScoringModel, Verdict
from training.features import MAX_SCALED, CategoricalField, NumericField


@dataclasses.dataclass(frozen=True, slots=True)
class _Numeric:
    name: str
    field: int  # position among the spec's fields
    logged: bool
    center: float
    spread: float
    centres: tuple[float, ...]  # per cluster, in scaled units


@dataclasses.dataclass(frozen=True, slots=True)
class _Categorical:
    name: str
    field: int
    index: Mapping[str, int]
    # parts[cluster][code]: the field's part of the squared distance; code -1 (the last
    # entry) is an unseen category. by_code[code][cluster] is the same table transposed.
    parts: tuple[tuple[float, ...], ...]
    by_code: tuple[tuple[float, ...], ...]
    usual: tuple[int, ...]  # per cluster, the code of its most common category


class RowScorer:
    """Scores one row of raw values for one model (local centroids only)."""

    def __init__(self, model: ScoringModel) -> None:
        self.model = model
        spec, centroids = model.spec, model.centroids
        slices = spec.field_slices
        numeric, categorical = [], []
        for f, field in enumerate(spec.fields):
            block = centroids[:, slices[field.name]]
            if isinstance(field, NumericField):
                numeric.append(
                    _Numeric(
                        field.name,
                        f,
                        field.transform == "log1p",
                        field.center,
                        field.spread,
                        tuple(block[:, 0].tolist()),
                    )
                )
            elif isinstance(field, CategoricalField):
                squares = block * block
                total = squares.sum(axis=1, keepdims=True)
                parts = np.concatenate([total - squares + (1.0 - block) ** 2, total], axis=1)
                usual = block.argmax(axis=1) if block.shape[1] else np.full(len(block), -2)
                categorical.append(
                    _Categorical(
                        field.name,
                        f,
                        {c: i for i, c in enumerate(field.categories)},
                        tuple(tuple(row) for row in parts.tolist()),
                        tuple(tuple(row) for row in parts.T.tolist()),
                        tuple(usual.tolist()),
                    )
                )
        self._numeric = tuple(numeric)
        self._categorical = tuple(categorical)
        # Plain tuples: unpacking them is cheaper than attribute lookups, per request.
        self._numeric_inputs = tuple((n.name, n.logged, n.center, n.spread) for n in numeric)
        self._categorical_inputs = tuple((c.name, c.index) for c in categorical)
        self._n_fields = len(spec.fields)
        self._names = tuple(field.name for field in spec.fields)
        self._categorical_fields = frozenset(c.field for c in self._categorical)
        self._numeric_centres = [[n.centres[i] for n in self._numeric] for i in range(model.k)]
        self._thresholds = model.thresholds.values.tolist()
        self._rare = model.thresholds.rare.tolist()

    def score(self, values: Mapping[str, float | str], *, top: int) -> Verdict | None:
        """The verdict for one row of raw values (validated kinds), or None when a scaled
        value is out of range (the array path then refuses it, naming the field)."""
        z = []
        for name, logged, center, spread in self._numeric_inputs:
            v = float(values[name])
            if logged:
                v = math.copysign(math.log1p(abs(v)), v)
            scaled = (v - center) / spread
            if not abs(scaled) <= MAX_SCALED:  # out of range (or NaN): the array path says so
                return None
            z.append(scaled)
        codes = [index.get(str(values[name]), -1) for name, index in self._categorical_inputs]
        # Per cluster: numeric sum of squares (math.dist runs it in C) plus table lookups.
        if z:
            squared = [math.dist(z, centres) ** 2 for centres in self._numeric_centres]
        else:
            squared = [0.0] * self.model.k
        for c, code in zip(self._categorical, codes, strict=True):
            squared = [s + part for s, part in zip(squared, c.by_code[code], strict=True)]
        best_sq = min(squared)
        return self._verdict(values, z, codes, squared.index(best_sq), best_sq, top)

    def _verdict(
        self,
        values: Mapping[str, float | str],
        z: list[float],
        codes: list[int],
        c: int,
        squared: float,
        top: int,
    ) -> Verdict:
        distance = math.sqrt(squared)
        threshold = self._thresholds[c]
        rare = self._rare[c]
        score = distance / threshold
        if rare:
            score = max(score, 1.0)
        parts = [0.0] * self._n_fields
        directions: list[Direction] = ["below"] * self._n_fields
        ranked: list[tuple[float, int]] = []
        unseen: list[int] = []
        for n, zj in zip(self._numeric, z, strict=True):
            d = zj - n.centres[c]
            part = d * d
            if part > 0.0:
                f = n.field
                parts[f] = part
                directions[f] = "above" if d > 0.0 else "below"
                ranked.append((-part, f))
        for cat, code in zip(self._categorical, codes, strict=True):
            f = cat.field
            part = parts[f] = cat.parts[c][code]
            if code < 0:
                directions[f] = "unseen"
                unseen.append(f)
                ranked.append((-part, f))
            elif part > 0.0 and code != cat.usual[c]:
                directions[f] = "different"
                ranked.append((-part, f))
        ranked.sort()  # largest part first; ties in field order
        chosen = [f for _, f in ranked[: max(top, 0)]]
        if unseen:  # an unseen category is always named
            chosen = sorted(set(chosen) | set(unseen), key=lambda f: (-parts[f], f))
        total = sum(parts)
        typical = self.model.typical[c]
        reasons = []
        for f in chosen:
            name = self._names[f]
            direction = directions[f]
            raw = values[name]
            reasons.append(
                Reason(
                    name,
                    parts[f] / total if total > 0.0 else 0.0,
                    str(raw) if f in self._categorical_fields else float(raw),
                    typical[name],
                    direction,
                )
            )
        return Verdict(
            cluster=c,
            distance=distance,
            threshold=threshold,
            score=score,
            anomalous=distance > threshold or rare,
            rare_pattern=rare,
            reasons=tuple(reasons),
        )
