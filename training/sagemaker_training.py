"""Train on SageMaker: upload the transformed splits, tune, and fetch the best model.

The splits are the pipeline's transformed train and test arrays, written as headerless CSV
(``text/csv;label_size=0``) under ``<prefix>/data/<run>/`` with SSE-KMS. The tuning job
minimises ``test:msd`` (see :mod:`training.sagemaker_requests`); the winner's
``model.tar.gz`` is read back in SageMaker's artifact format, so the rest of the pipeline
(calibration, registration) is the same as for a local model.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from training.artifact import read_model_tar
from training.errors import TuningError
from training.parameter_ranges import DEFAULT_PARAMETER_RANGES
from training.sagemaker_requests import (
    TUNING_JOB_NAME_MAX,
    SageMakerConfig,
    create_hyper_parameter_tuning_job,
    put_object,
    resource_name,
)
from training.sagemaker_tuning import BestModel, TuningProgress, best_model, wait_for_tuning_job

# Rows per CSV piece while writing a split: bounded memory for the text.
_ROWS_PER_PIECE = 65_536


@dataclass(frozen=True)
class SageMakerModel:
    """What a SageMaker run produced, ready for calibration and registration."""

    centroids: npt.NDArray[np.float32]
    best: BestModel
    tuning_job_name: str

    def source(self) -> dict[str, str]:
        """The manifest's ``source`` entry."""
        return {
            "kind": "sagemaker",
            "tuning_job": self.tuning_job_name,
            "training_job": self.best.training_job_name,
            "model_data_url": self.best.model_data_url,
        }


def split_csv(x: npt.NDArray[np.floating[Any]]) -> bytes:
    """A split as headerless CSV with float32 precision (what the container reads)."""
    out = io.BytesIO()
    for start in range(0, len(x), _ROWS_PER_PIECE):
        np.savetxt(out, np.asarray(x[start : start + _ROWS_PER_PIECE]), delimiter=",", fmt="%.9g")
    return out.getvalue()


def tuning_job_name(config: SageMakerConfig, when: datetime) -> str:
    """The run's tuning job name, which also names its data folder."""
    return resource_name(config.name_prefix, "", when, limit=TUNING_JOB_NAME_MAX)


def _run_requests(
    config: SageMakerConfig,
    name: str,
    bodies: Mapping[str, Any],
    *,
    k: int,
    feature_dim: int,
    **search: Any,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The two split uploads and the tuning job of run ``name`` (shared by run and plan).

    Each split is one object under ``data/<name>/<split>/``, which is its channel.
    """
    uploads = [
        put_object(config, config.s3_key("data", name, split, f"{split}.csv"), bodies[split])
        for split in ("train", "test")
    ]
    tuning = create_hyper_parameter_tuning_job(
        config,
        name,
        k=k,
        feature_dim=feature_dim,
        train_uri=config.s3_uri("data", name, "train"),
        test_uri=config.s3_uri("data", name, "test"),
        output_uri=config.s3_uri("output"),
        **search,
    )
    return uploads, tuning


def training_plan(
    config: SageMakerConfig,
    *,
    k: int,
    feature_dim: int,
    rows: Mapping[str, int],
    when: datetime,
    parameter_ranges: Mapping[str, Any] = DEFAULT_PARAMETER_RANGES,
    max_jobs: int = 50,
    max_parallel: int = 2,
    strategy: str = "Bayesian",
    endpoint_name: str | None = None,
) -> list[dict[str, Any]]:
    """Every request :func:`train_on_sagemaker` (and the deployment) would send, in order.

    Values known only at run time (the split bodies, the best job's artifact) are shown as
    ``<...>`` placeholders.
    """
    name = tuning_job_name(config, when)
    uploads, tuning = _run_requests(
        config,
        name,
        {split: f"<{rows[split]} transformed {split} rows as CSV>" for split in ("train", "test")},
        k=k,
        feature_dim=feature_dim,
        parameter_ranges=parameter_ranges,
        max_jobs=max_jobs,
        max_parallel=max_parallel,
        strategy=strategy,
    )
    plan = [{"operation": "PutObject", "request": upload} for upload in uploads]
    plan.append({"operation": "CreateHyperParameterTuningJob", "request": tuning})
    artifact = config.s3_uri("output", "<best training job>", "output", "model.tar.gz")
    plan.append({"operation": "GetObject", "request": {"url": artifact}})
    if endpoint_name:
        from training.sagemaker_deploy import endpoint_plan

        plan.extend(endpoint_plan(config, artifact, endpoint_name=endpoint_name, when=when))
    return plan


def train_on_sagemaker(
    sagemaker: Any,
    s3: Any,
    config: SageMakerConfig,
    x_train: npt.NDArray[np.floating[Any]],
    x_test: npt.NDArray[np.floating[Any]],
    *,
    k: int,
    when: datetime,
    parameter_ranges: Mapping[str, Any] = DEFAULT_PARAMETER_RANGES,
    max_jobs: int = 50,
    max_parallel: int = 2,
    strategy: str = "Bayesian",
    poll_s: float = 60.0,
    progress: Callable[[TuningProgress], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> SageMakerModel:
    """Upload, tune and fetch the best centroids; TuningError naming the failed step."""
    from botocore.exceptions import BotoCoreError, ClientError

    name = tuning_job_name(config, when)
    uploads, request = _run_requests(
        config,
        name,
        {"train": split_csv(x_train), "test": split_csv(x_test)},
        k=k,
        feature_dim=int(x_train.shape[1]),
        parameter_ranges=parameter_ranges,
        max_jobs=max_jobs,
        max_parallel=max_parallel,
        strategy=strategy,
    )
    for split, upload in zip(("train", "test"), uploads, strict=True):
        try:
            s3.put_object(**upload)
        except (ClientError, BotoCoreError) as exc:
            where = f"s3://{upload['Bucket']}/{upload['Key']}"
            raise TuningError(f"upload of the {split} split to {where} failed: {exc}") from None
    try:
        sagemaker.create_hyper_parameter_tuning_job(**request)
    except (ClientError, BotoCoreError) as exc:
        raise TuningError(f"tuning job {name} could not start: {exc}") from None
    waited = wait_for_tuning_job(sagemaker, name, poll_s=poll_s, progress=progress, sleep=sleep)
    best = best_model(sagemaker, waited)
    bucket, _, key = best.model_data_url.removeprefix("s3://").partition("/")
    try:
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except (ClientError, BotoCoreError) as exc:
        raise TuningError(f"cannot read the best model {best.model_data_url}: {exc}") from None
    centroids = read_model_tar(data, feature_dim=int(x_train.shape[1]))
    if centroids.shape[0] != k:
        raise TuningError(f"the best model has {centroids.shape[0]} centroids, expected k={k}")
    return SageMakerModel(centroids, best, name)
