"""Errors that reach users as one clear line.

Hierarchy::

    FraudscoreError
    ├── DataError            bad CSV input (file, column, row)
    ├── SpecError            bad feature spec or a transform that cannot be applied
    ├── HyperparameterError  a hyperparameter the SageMaker container would reject
    ├── TuningError          bad ParameterRanges or no successful trial
    ├── ArtifactError        unreadable or mismatched model.tar.gz / model_algo-1
    ├── BundleError          corrupt, truncated or mismatched bundle file
    └── RegistryError        missing version, bad ACTIVE pointer, unsupported location
"""

from __future__ import annotations


class FraudscoreError(Exception):
    """Base of every error fraudscore reports to a user instead of a traceback."""


class DataError(FraudscoreError):
    """Bad input data, located as precisely as possible."""

    def __init__(
        self,
        problem: str,
        *,
        file: str | None = None,
        column: str | None = None,
        row: int | None = None,
    ) -> None:
        self.problem = problem
        self.file = file
        self.column = column
        self.row = row
        where = []
        if file is not None:
            where.append(file)
        if column is not None:
            where.append(f"column '{column}'")
        if row is not None:
            where.append(f"row {row}")
        super().__init__(f"{', '.join(where)}: {problem}" if where else problem)


class SpecError(FraudscoreError):
    """A feature spec that is invalid, or cannot be applied to the given data.

    When one value is to blame, ``field`` names its field, ``index`` its row in the input and
    ``detail`` says what is wrong with it, without the field and row.
    """

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        index: int | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.field = field
        self.index = index
        self.detail = detail


class HyperparameterError(FraudscoreError):
    """A hyperparameter name or value the SageMaker kmeans:1 container would reject."""

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        self.problem = problem
        super().__init__(f"hyperparameter '{name}': {problem}")


class TuningError(FraudscoreError):
    """Invalid tuning configuration, or a tuning run without a usable result."""


class ArtifactError(FraudscoreError):
    """A model artifact that is not a readable SageMaker K-Means model."""


class BundleError(FraudscoreError):
    """A model bundle file that is corrupt, truncated or inconsistent."""


class RegistryError(FraudscoreError):
    """A registry operation that cannot be carried out."""
