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
    train_uri: str
    test_uri: str

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


def _s3_parts(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


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

    name = resource_name(config.name_prefix, "", when, limit=TUNING_JOB_NAME_MAX)
    run = f"data/{name}"
    uris = {}
    for split, x in (("train", x_train), ("test", x_test)):
        uri = config.s3_uri(run, split, f"{split}.csv")
        bucket, key = _s3_parts(uri)
        try:
            s3.put_object(
                Bucket=bucket,
                Key=key,
                Body=split_csv(x),
                ServerSideEncryption="aws:kms",
                SSEKMSKeyId=config.kms_key_id,
                BucketKeyEnabled=True,
            )
        except (ClientError, BotoCoreError) as exc:
            raise TuningError(f"upload of the {split} split to {uri} failed: {exc}") from None
        uris[split] = uri.rsplit("/", 1)[0]  # the channel is the prefix
    request = create_hyper_parameter_tuning_job(
        config,
        name,
        k=k,
        feature_dim=int(x_train.shape[1]),
        train_uri=uris["train"],
        test_uri=uris["test"],
        output_uri=config.s3_uri("output"),
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
    bucket, key = _s3_parts(best.model_data_url)
    try:
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except (ClientError, BotoCoreError) as exc:
        raise TuningError(f"cannot read the best model {best.model_data_url}: {exc}") from None
    centroids = read_model_tar(data, feature_dim=int(x_train.shape[1]))
    if centroids.shape[0] != k:
        raise TuningError(f"the best model has {centroids.shape[0]} centroids, expected k={k}")
    return SageMakerModel(centroids, best, name, uris["train"], uris["test"])
