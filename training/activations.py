"""The activation history: every change of ``ACTIVE``, numbered, so a rollback knows where to go.

Each activation is one immutable record ``activations/<n>.json`` (``n`` zero-padded, created
with an exclusive write so two replicas never take the same number)::

    {"number": 7, "model_version": "...", "thresholds_version": 2, "action": "promote",
     "at": "2026-11-28T12:00:00+00:00", "by": "sha256:...", "previous": 6}

``previous`` is the activation that was in force when this one was made. A rollback activates
the pointer of ``previous`` and records that activation's own ``previous`` as its
predecessor, so successive rollbacks walk back through history instead of toggling between
the last two versions.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from training.bundle import MODEL_VERSION_PATTERN, load_json
from training.errors import BundleError, RegistryError
from training.storage import MissingKeyError, Storage

ACTIVATIONS_PREFIX = "activations/"
ACTIONS = ("activate", "train", "promote", "recalibrate", "rollback")
_FILE = re.compile(r"([0-9]{6,})\.json")
# Attempts at taking the next number when other writers keep winning the race.
_CREATE_ATTEMPTS = 20


@dataclass(frozen=True)
class Activation:
    """One change of the ``ACTIVE`` pointer."""

    number: int
    model_version: str
    thresholds_version: int
    action: str
    at: str
    by: str | None
    previous: int | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, *, source: str) -> Activation:
        """Parse and validate one record; :class:`BundleError` naming ``source``."""
        if not isinstance(data, dict):
            raise BundleError(f"{source}: must be a JSON object")
        try:
            record = cls(
                number=_int(data["number"]),
                model_version=str(data["model_version"]),
                thresholds_version=_int(data["thresholds_version"]),
                action=str(data["action"]),
                at=str(data["at"]),
                by=None if data.get("by") is None else str(data["by"]),
                previous=None if data.get("previous") is None else _int(data["previous"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            detail = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise BundleError(f"{source}: invalid activation record: {detail}") from None
        if not MODEL_VERSION_PATTERN.fullmatch(record.model_version):
            raise BundleError(f"{source}: invalid model_version {record.model_version!r}")
        return record


def _int(value: Any) -> int:
    if type(value) is not int or value < 1:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return value


def activation_key(number: int) -> str:
    """The storage key of activation ``number``."""
    return f"{ACTIVATIONS_PREFIX}{number:06d}.json"


def activation_numbers(storage: Storage) -> list[int]:
    """Every recorded activation number, ascending."""
    numbers = []
    for key in storage.list(ACTIVATIONS_PREFIX):
        match = _FILE.fullmatch(key[len(ACTIVATIONS_PREFIX) :])
        if match:
            numbers.append(int(match.group(1)))
    return sorted(numbers)


def load_activation(storage: Storage, number: int, *, where: str = "") -> Activation:
    """Activation ``number``; :class:`RegistryError` if it was never recorded."""
    key = activation_key(number)
    source = f"{where.rstrip('/')}/{key}" if where else key
    try:
        raw = storage.read(key)
    except MissingKeyError:
        raise RegistryError(f"activation {number} is not recorded ({source})") from None
    record = Activation.from_dict(load_json(raw, source=source), source=source)
    if record.number != number:
        raise BundleError(f"{source}: says number {record.number}, expected {number}")
    return record


def record_activation(
    storage: Storage,
    *,
    model_version: str,
    thresholds_version: int,
    action: str,
    at: str,
    by: str | None,
    previous: int | None,
) -> Activation:
    """Append one activation under the next free number (exclusive create, retried)."""
    if action not in ACTIONS:
        raise RegistryError(f"unknown activation action {action!r}; expected one of {ACTIONS}")
    for _ in range(_CREATE_ATTEMPTS):
        existing = activation_numbers(storage)
        number = (existing[-1] if existing else 0) + 1
        record = Activation(number, model_version, thresholds_version, action, at, by, previous)
        text = json.dumps(record.to_dict(), indent=2) + "\n"
        if storage.create(activation_key(number), text.encode()):
            return record
    raise RegistryError("could not record the activation: other writers kept taking its number")
