"""Training on SageMaker against moto (emulated S3 and SageMaker control plane).

moto completes a tuning job at once with a fake ``BestTrainingJob`` and writes no
artifact; a hook after ``CreateHyperParameterTuningJob`` plays SageMaker's part: it runs a
"trial" (a training job), names it the best and puts its ``model.tar.gz`` in S3.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import boto3
import numpy as np
import pytest
from moto import mock_aws
from moto.sagemaker.models import sagemaker_backends

from tests.aws_fakes import create_trial_job, name_best
from tests.training.test_sagemaker_requests import config
from training.artifact import write_model_tar
from training.errors import TuningError
from training.sagemaker_training import split_csv, train_on_sagemaker

pytestmark = pytest.mark.usefixtures("fake_aws")
REGION = "us-east-1"
WHEN = datetime(2026, 11, 28, 10, 15, tzinfo=UTC)
KEY = "arn:aws:kms:us-east-1:123456789012:key/abcd"


def play_sagemaker(
    sagemaker: Any, s3: Any, centroids: np.ndarray | Callable[[dict[str, Any]], np.ndarray], *,
    k_written: int | None = None,
) -> None:  # fmt: skip
    """After the tuning job is created: one finished trial, named best, with its artifact.

    ``centroids`` is the trial's model, or makes it from the tuning job's parameters.
    """

    def after_create(params: dict[str, Any], **_: Any) -> None:
        model = centroids(params) if callable(centroids) else centroids
        name = params["HyperParameterTuningJobName"]
        definition = params["TrainingJobDefinition"]
        job = f"{name}-001-abcd"
        create_trial_job(sagemaker, job, definition, REGION)
        backend = sagemaker_backends["123456789012"][REGION]
        tuning = backend.hyper_parameter_tuning_jobs[name]
        name_best(tuning, job, 1.5, {"extra_center_factor": "6"})
        output = definition["OutputDataConfig"]["S3OutputPath"].removeprefix("s3://")
        bucket, _, prefix = output.partition("/")
        s3.put_object(
            Bucket=bucket,
            Key=f"{prefix}/{job}/output/model.tar.gz",
            Body=write_model_tar(model[:k_written]),
        )

    # botocore's own event hooks: keep the request's parameters, act once it succeeded.
    def remember(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["params"] = dict(params)

    def after(context: dict[str, Any], **_: Any) -> None:
        after_create(context["params"])

    events = sagemaker.meta.events
    events.register("provide-client-params.sagemaker.CreateHyperParameterTuningJob", remember)
    events.register("after-call.sagemaker.CreateHyperParameterTuningJob", after)


def test_splits_are_uploaded_encrypted_and_the_best_centroids_come_back() -> None:
    rng = np.random.default_rng(0)
    x_train, x_test = rng.normal(size=(300, 4)), rng.normal(size=(80, 4))
    centroids = rng.normal(size=(3, 4)).astype(np.float32)
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket="fraudscore-data")
        sagemaker = boto3.client("sagemaker", region_name=REGION)
        play_sagemaker(sagemaker, s3, centroids, k_written=3)
        c = config(region=REGION, kms_key_id=KEY)
        seen: list[Any] = []
        model = train_on_sagemaker(
            sagemaker, s3, c, x_train, x_test, k=3, when=WHEN, max_jobs=4,
            progress=seen.append, sleep=lambda _: None,
        )  # fmt: skip
        train_key = "fraudscore/data/fraudscore-20261128-101500/train/train.csv"
        head = s3.head_object(Bucket="fraudscore-data", Key=train_key)
        body = s3.get_object(Bucket="fraudscore-data", Key=train_key)["Body"].read()
        job = sagemaker.describe_hyper_parameter_tuning_job(
            HyperParameterTuningJobName=model.tuning_job_name
        )
    np.testing.assert_array_equal(model.centroids, centroids)
    assert model.best.objective == 1.5
    assert model.source()["kind"] == "sagemaker"
    assert model.source()["training_job"] == "fraudscore-20261128-101500-001-abcd"
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"] == KEY
    assert body == split_csv(x_train)
    assert body.count(b"\n") == 300
    static = job["TrainingJobDefinition"]["StaticHyperParameters"]
    assert (static["k"], static["feature_dim"]) == ("3", "4")
    channels = {ch["ChannelName"]: ch for ch in job["TrainingJobDefinition"]["InputDataConfig"]}
    assert channels["train"]["ContentType"] == "text/csv;label_size=0"
    assert seen
    assert seen[-1].status == "Completed"


def test_a_best_model_of_the_wrong_size_is_refused() -> None:
    rng = np.random.default_rng(1)
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket="fraudscore-data")
        sagemaker = boto3.client("sagemaker", region_name=REGION)
        play_sagemaker(sagemaker, s3, rng.normal(size=(3, 4)).astype(np.float32), k_written=2)
        with pytest.raises(TuningError, match="2 centroids, expected k=3"):
            train_on_sagemaker(
                sagemaker, s3, config(region=REGION), rng.normal(size=(50, 4)),
                rng.normal(size=(10, 4)), k=3, when=WHEN, sleep=lambda _: None,
            )  # fmt: skip


def test_a_missing_bucket_fails_at_the_upload() -> None:
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        sagemaker = boto3.client("sagemaker", region_name=REGION)
        with pytest.raises(TuningError, match="upload of the train split"):
            train_on_sagemaker(
                sagemaker, s3, config(region=REGION), np.zeros((5, 2)), np.zeros((2, 2)),
                k=2, when=WHEN,
            )  # fmt: skip
