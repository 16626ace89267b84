"""The data plane: request bodies of the scoring routes to response bodies, over one model.

Shared by the FastAPI routes and the direct ASGI path in :mod:`service.asgi`, so both
answer byte for byte the same. Raises :class:`~service.errors.ServiceError` subclasses.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from service.backends import BackendFailure, ClusterBackend
from service.errors import (
    BackendBusy,
    BackendTimeout,
    BackendUnavailable,
    InvalidRequest,
    NotReady,
    PayloadTooLarge,
    validation_problems,
)
from service.metrics import ServiceMetrics
from service.micro_batching import MicroBatcher
from service.model_state import ModelHolder, ServingModel
from service.schemas import Transaction, batch_request_model
from service.transactions import (
    Decisions,
    decide,
    decide_columns,
    in_batch,
    model_columns,
    one,
    response_body,
    row_values,
)
from training.errors import SpecError

# Batch bodies up to this size (about 80 transactions like the documented example, under
# 2 ms of scoring) are scored on the event loop; larger ones on the embedded backend's
# thread, where handing them over (tens of microseconds) costs little next to the work.
INLINE_BATCH_BYTES = 16 * 1024


@dataclasses.dataclass(frozen=True)
class MicroBatchSettings:
    """How requests to a blocking backend are coalesced (see :mod:`service.micro_batching`)."""

    max_rows: int = 1000
    max_wait_s: float = 0.002
    max_in_flight: int = 4


class DataPlane:
    """Validates, scores and encodes; the model is read once per request."""

    def __init__(
        self,
        holder: ModelHolder,
        backend: ClusterBackend,
        metrics: ServiceMetrics,
        *,
        max_batch: int,
        reasons: int,
        retry_after_s: int,
        executor: Executor | None = None,
        micro_batch: MicroBatchSettings | None = None,
    ) -> None:
        """``executor`` runs blocking backends' calls (None: the event loop's default), or
        with an embedded backend the large batches (None: on the event loop); with
        ``micro_batch``, concurrent requests to a blocking backend share calls."""
        self.holder = holder
        self.executor = executor
        self.batcher = (
            MicroBatcher(
                self._decide_columns,
                executor,
                max_rows=micro_batch.max_rows,
                max_wait_s=micro_batch.max_wait_s,
                max_in_flight=micro_batch.max_in_flight,
            )
            if micro_batch is not None and backend.blocking
            else None
        )
        self.backend = backend
        self.metrics = metrics
        self.max_batch = max_batch
        self.reasons = reasons
        self.retry_after_s = retry_after_s
        self.batch_model: type[BaseModel] = batch_request_model(max_batch)

    def serving(self) -> ServingModel:
        """The model to score this request with; NotReady while there is none."""
        serving = self.holder.current
        if serving is None:
            raise NotReady(
                f"no model is ready: {self.holder.problem}", retry_after_s=self.retry_after_s
            )
        return serving

    async def score_one(self, body: bytes) -> bytes:
        """``POST /score``: one transaction's JSON to its decision's JSON."""
        serving = self.serving()
        try:
            transaction = Transaction.model_validate_json(body)
        except ValidationError as exc:
            raise InvalidRequest.of(validation_problems(exc)) from None
        if self.backend.embedded:
            verdict = serving.row.score(row_values(serving.layout, transaction), top=self.reasons)
            if verdict is not None:
                self.metrics.observe_decisions((verdict.cluster,), (verdict.anomalous,))
                model = serving.model
                return orjson.dumps(
                    response_body(
                        transaction.transaction_id,
                        verdict,
                        model.model_version,
                        model.thresholds_version,
                        self.backend.name,
                    )
                )
        decisions = await self._run(serving, [transaction], one)
        return orjson.dumps(decisions.bodies[0])

    async def score_batch(self, body: bytes) -> bytes:
        """``POST /score/batch``: many transactions, answered in order by one model version."""
        if not self.backend.blocking:
            if self.executor is not None and len(body) > INLINE_BATCH_BYTES:
                # Milliseconds of CPU: on the event loop they would stall every other
                # connection's reads and writes, the unsent part of large responses too.
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self.executor, self._score_batch_here, body)
            return self._score_batch_here(body)
        serving = self.serving()
        batch = self._batch(body)
        decisions = await self._run(serving, batch.transactions, in_batch)
        return orjson.dumps({"results": decisions.bodies})

    def _score_batch_here(self, body: bytes) -> bytes:
        """``POST /score/batch`` with an embedded backend, on the calling thread."""
        serving = self.serving()
        batch = self._batch(body)
        decisions = self._decide(serving, batch.transactions, in_batch)
        return orjson.dumps({"results": decisions.bodies})

    def _batch(self, body: bytes) -> Any:
        """The validated batch request; InvalidRequest or PayloadTooLarge if it is not."""
        try:
            return self.batch_model.model_validate_json(body)
        except ValidationError as exc:
            if any(e["type"] == "too_long" and e["loc"] == ("transactions",) for e in exc.errors()):
                raise PayloadTooLarge(
                    f"a batch holds at most {self.max_batch} transactions"
                ) from None
            raise InvalidRequest.of(validation_problems(exc)) from None

    async def _run(self, serving: ServingModel, transactions: Any, where: Any) -> Decisions:
        """Decide in place, or on the worker threads when the backend blocks on I/O."""
        if not self.backend.blocking:
            return self._decide(serving, transactions, where)
        # Checked here, per request, so a bad request fails alone even in a shared batch.
        columns = model_columns(serving.layout, transactions, where)
        ids = [t.transaction_id for t in transactions]
        try:
            if self.batcher is not None:
                decisions = await self.batcher.submit(serving, columns, ids)
            else:
                loop = asyncio.get_running_loop()
                decisions = await loop.run_in_executor(
                    self.executor, self._decide_columns, serving, columns, ids
                )
        except SpecError as exc:
            raise _invalid_value(exc, serving, where) from None
        except BackendFailure as exc:
            raise _backend_error(exc) from None
        except ValueError as exc:
            # An assigner's answer that does not fit the rows (see scoring._check_assignment).
            raise BackendUnavailable(f"the {self.backend.name} backend failed: {exc}") from None
        self._observe(decisions)
        return decisions

    def _decide_columns(self, serving: ServingModel, columns: Any, ids: Sequence[str]) -> Decisions:
        """One assignment call for checked columns (on a worker thread)."""
        return decide_columns(
            serving.model, columns, ids, backend=self.backend, reasons=self.reasons
        )

    def _observe(self, decisions: Decisions) -> None:
        self.metrics.observe_decisions(decisions.clusters, decisions.anomalous)
        self.metrics.backend_rows.labels(decisions.backend).inc(len(decisions.clusters))

    def _decide(self, serving: ServingModel, transactions: Any, where: Any) -> Decisions:
        try:
            decisions = decide(
                serving.model,
                serving.layout,
                transactions,
                backend=self.backend,
                reasons=self.reasons,
                where=where,
            )
        except BackendFailure as exc:
            raise _backend_error(exc) from None
        except SpecError as exc:
            raise _invalid_value(exc, serving, where) from None
        except ValueError as exc:
            # An assigner's answer that does not fit the rows (see scoring._check_assignment).
            raise BackendUnavailable(f"the {self.backend.name} backend failed: {exc}") from None
        self._observe(decisions)
        return decisions


def _backend_error(exc: BackendFailure) -> BackendUnavailable:
    """A backend failure as the HTTP-facing error its status asks for."""
    error = {503: BackendBusy, 504: BackendTimeout}.get(exc.status, BackendUnavailable)
    return error(str(exc))


def _invalid_value(exc: SpecError, serving: ServingModel, where: Any) -> InvalidRequest:
    """A value the transform refused, named by its path in the request body."""
    path, problem = "body", str(exc)
    if exc.field is not None and exc.index is not None:
        source = next(s for s in serving.layout if s.name == exc.field)
        field = exc.field if source.location != "features" else f"features.{exc.field}"
        path, problem = f"{where(exc.index)}{field}", exc.detail or problem
    return InvalidRequest.of([(path, problem)])
