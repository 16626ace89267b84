"""Train on SageMaker: upload the transformed splits, tune, and fetch the best model.

The splits are the pipeline's transformed train and test arrays, streamed as headerless CSV
(``text/csv;label_size=0``) to ``<prefix>/data/<run>/`` with SSE-KMS: one PutObject when a
split fits in one part, else a multipart upload (:mod:`training.s3_upload`), so memory is
bounded by the part size, not by the data. The tuning job minimises ``test:msd`` (see
:mod:`training.sagemaker_requests`); the winner's ``model.tar.gz`` is read back in
SageMaker's artifact format, so the rest of the pipeline (calibration, registration) is the
same as for a local model.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from training.artifact import read_model_tar
from training.errors import TuningError
from training.parameter_ranges import DEFAULT_PARAMETER_RANGES
from training.s3_upload import (
    DEFAULT_PART_SIZE,
    UploadError,
    part_size_for,
    upload_plan,
    upload_stream,
)
from training.sagemaker_requests import (
    TUNING_JOB_NAME_MAX,
    SageMakerConfig,
    create_hyper_parameter_tuning_job,
    resource_name,
)
from training.sagemaker_tuning import BestModel, TuningProgress, best_model, wait_for_tuning_job

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
# The longest "%.9g" value ("-1.23456789e-308") and its delimiter: bytes of CSV per cell at
# most, which bounds a split's size before it is written.
MAX_CELL_BYTES = 17
# About this many bytes of CSV per piece handed to the upload.
_PIECE_BYTES = 1 << 20


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


def csv_pieces(x: npt.NDArray[np.floating[Any]]) -> Iterator[bytes]:
    """A split (rows x columns) as headerless CSV pieces of about 1 MiB.

    Float32 precision, what the container reads. ``x`` may be memory-mapped: one slice of
    rows is read at a time.
    """
    rows = max(1, _PIECE_BYTES // (MAX_CELL_BYTES * max(x.shape[1], 1)))
    for start in range(0, len(x), rows):
        out = io.BytesIO()
        np.savetxt(out, np.asarray(x[start : start + rows]), delimiter=",", fmt="%.9g")
        yield out.getvalue()


def csv_size(x: npt.NDArray[np.floating[Any]]) -> int:
    """Bytes of :func:`csv_pieces` of ``x``, without keeping them."""
    return sum(len(piece) for piece in csv_pieces(x))


def split_key(config: SageMakerConfig, name: str, split: str) -> str:
    """A split's one object, under ``data/<name>/<split>/``, which is its channel."""
    return config.s3_key("data", name, split, f"{split}.csv")


def split_part_size(rows: int, columns: int, part_size: int = DEFAULT_PART_SIZE) -> int:
    """The part size for a split of ``rows`` x ``columns`` values.

    ``part_size``, or more when the largest CSV such a split can make would need more parts
    than S3 allows (the real size is known only once it is written).
    """
    return part_size_for(rows * columns * MAX_CELL_BYTES, part_size)


def tuning_job_name(config: SageMakerConfig, when: datetime) -> str:
    """The run's tuning job name, which also names its data folder."""
    return resource_name(config.name_prefix, "", when, limit=TUNING_JOB_NAME_MAX)


def _tuning_request(
    config: SageMakerConfig, name: str, *, k: int, feature_dim: int, **search: Any
) -> dict[str, Any]:
    """The tuning job of run ``name``, its channels the splits' folders (run and plan)."""
    return create_hyper_parameter_tuning_job(
        config,
        name,
        k=k,
        feature_dim=feature_dim,
        train_uri=config.s3_uri("data", name, "train"),
        test_uri=config.s3_uri("data", name, "test"),
        output_uri=config.s3_uri("output"),
        **search,
    )


def training_plan(
    config: SageMakerConfig,
    *,
    k: int,
    feature_dim: int,
    rows: Mapping[str, int],
    sizes: Mapping[str, int],
    when: datetime,
    parameter_ranges: Mapping[str, Any] = DEFAULT_PARAMETER_RANGES,
    max_jobs: int = 50,
    max_parallel: int = 2,
    strategy: str = "Bayesian",
    endpoint_name: str | None = None,
    part_size: int = DEFAULT_PART_SIZE,
) -> list[dict[str, Any]]:
    """Every request :func:`train_on_sagemaker` (and the deployment) would send, in order.

    ``rows`` and ``sizes`` are each split's rows and bytes of CSV (:func:`csv_size`): they
    decide between one PutObject and a multipart upload, as in a real run. Values known only
    at run time (bodies, upload ids, the best job's artifact) are ``<...>`` placeholders.
    """
    name = tuning_job_name(config, when)
    plan: list[dict[str, Any]] = []
    for split in SPLITS:
        plan += upload_plan(
            config,
            split_key(config, name, split),
            size=sizes[split],
            part_size=split_part_size(rows[split], feature_dim, part_size),
            body=f"{rows[split]} transformed {split} rows as CSV",
        )
    tuning = _tuning_request(
        config,
        name,
        k=k,
        feature_dim=feature_dim,
        parameter_ranges=parameter_ranges,
        max_jobs=max_jobs,
        max_parallel=max_parallel,
        strategy=strategy,
    )
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
    part_size: int = DEFAULT_PART_SIZE,
) -> SageMakerModel:
    """Upload, tune and fetch the best centroids; TuningError naming the failed step.

    ``part_size`` is the upload's part size (S3's minimum is 5 MiB; smaller only for tests).
    """
    from botocore.exceptions import BotoCoreError, ClientError

    name = tuning_job_name(config, when)
    for split, x in zip(SPLITS, (x_train, x_test), strict=True):
        upload_split(s3, config, name, split, x, part_size=part_size)
    request = _tuning_request(
        config,
        name,
        k=k,
        feature_dim=int(x_train.shape[1]),
        parameter_ranges=parameter_ranges,
        max_jobs=max_jobs,
        max_parallel=max_parallel,
        strategy=strategy,
    )
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


def upload_split(
    s3: Any,
    config: SageMakerConfig,
    name: str,
    split: str,
    x: npt.NDArray[np.floating[Any]],
    *,
    part_size: int = DEFAULT_PART_SIZE,
) -> None:
    """Stream one split as CSV to its channel; TuningError naming the split, step and key."""
    rows, columns = x.shape
    try:
        uploaded = upload_stream(
            s3,
            config,
            split_key(config, name, split),
            csv_pieces(x),
            part_size=split_part_size(rows, columns, part_size),
        )
    except UploadError as exc:
        raise TuningError(f"upload of the {split} split: {exc}") from None
    how = f"{uploaded.parts} parts" if uploaded.parts else "one request"
    log.info("uploaded the %s split (%d bytes, %s) to %s", split, uploaded.size, how, uploaded.url)
