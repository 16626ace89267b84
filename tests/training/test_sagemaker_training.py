"""Training on SageMaker against moto (emulated S3 and SageMaker control plane).

moto completes a tuning job at once with a fake ``BestTrainingJob`` and writes no
artifact; a hook after ``CreateHyperParameterTuningJob`` plays SageMaker's part: it runs a
"trial" (a training job), names it the best and puts its ``model.tar.gz`` in S3.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.stub import Stubber
from moto import mock_aws
from moto.sagemaker.models import sagemaker_backends

from tests.aws_fakes import create_trial_job, name_best
from tests.training.test_sagemaker_requests import config
from training.artifact import write_model_tar
from training.demo import DEMO_FEATURES, LABEL_COLUMN, DemoConfig, generate, write_csv
from training.errors import TuningError
from training.pipeline import SageMakerTarget, TrainRequest, sagemaker_plan, train
from training.registry import open_registry
from training.sagemaker_training import csv_pieces, csv_size, train_on_sagemaker, training_plan

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
    assert body == b"".join(csv_pieces(x_train))
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


def s3_requests(s3: Any) -> list[tuple[str, dict[str, Any]]]:
    """Every S3 request the client sends from now on: (operation, parameters)."""
    sent: list[tuple[str, dict[str, Any]]] = []

    def remember(params: dict[str, Any], model: Any, **_: Any) -> None:
        sent.append((model.name, dict(params)))

    s3.meta.events.register("before-parameter-build.s3.*", remember)
    return sent


def shown_size(body: Any) -> int:
    """A real body's size, or the size in a plan's ``<..., N bytes>`` placeholder."""
    return len(body) if isinstance(body, bytes) else int(body.rsplit(" ", 2)[-2].lstrip("<"))


def assert_plan_matches(plan: list[dict[str, Any]], sent: list[tuple[str, dict[str, Any]]]) -> None:
    """The plan's uploads are the requests sent: operations, keys (less the run name), sizes."""
    uploads = [step for step in plan if "/data/" in step["request"].get("Key", "")]
    data = [(op, params) for op, params in sent if "/data/" in params.get("Key", "")]
    assert [step["operation"] for step in uploads] == [op for op, _ in data]
    for step, (_, params) in zip(uploads, data, strict=True):
        shown = step["request"]
        assert shown["Key"].split("/")[-2:] == params["Key"].split("/")[-2:]
        assert set(shown) == set(params)
        if "Body" in params:
            assert shown_size(shown["Body"]) == len(params["Body"])


def test_a_split_larger_than_a_part_streams_as_an_encrypted_multipart_upload(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("moto.s3.models.S3_UPLOAD_PART_MIN_SIZE", 1)  # small parts in tests
    rng = np.random.default_rng(2)
    x_train, x_test = rng.normal(size=(300, 4)), rng.normal(size=(20, 4))
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket="fraudscore-data")
        sagemaker = boto3.client("sagemaker", region_name=REGION)
        play_sagemaker(sagemaker, s3, rng.normal(size=(3, 4)).astype(np.float32))
        c = config(region=REGION, kms_key_id=KEY)
        sent = s3_requests(s3)
        train_on_sagemaker(
            sagemaker, s3, c, x_train, x_test, k=3, when=WHEN, sleep=lambda _: None,
            part_size=4096,
        )  # fmt: skip
        sent = list(sent)
        key = "fraudscore/data/fraudscore-20261128-101500/train/train.csv"
        head = s3.head_object(Bucket="fraudscore-data", Key=key)
        body = s3.get_object(Bucket="fraudscore-data", Key=key)["Body"].read()
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"] == KEY
    assert body == b"".join(csv_pieces(x_train))
    np.testing.assert_allclose(np.loadtxt(body.splitlines(), delimiter=","), x_train, rtol=1e-8)
    operations = [op for op, params in sent if "/data/" in params.get("Key", "")]
    parts = -(-csv_size(x_train) // 4096)
    assert operations == [
        "CreateMultipartUpload", *["UploadPart"] * parts, "CompleteMultipartUpload", "PutObject"
    ]  # fmt: skip
    plan = training_plan(
        c, k=3, feature_dim=4, rows={"train": 300, "test": 20},
        sizes={"train": csv_size(x_train), "test": csv_size(x_test)}, when=WHEN, part_size=4096,
    )  # fmt: skip
    assert_plan_matches(plan, sent)


def test_a_failed_part_aborts_the_upload_and_no_tuning_job_starts() -> None:
    s3 = boto3.client("s3", region_name=REGION)
    sagemaker = boto3.client("sagemaker", region_name=REGION)
    key = "fraudscore/data/fraudscore-20261128-101500/train/train.csv"
    where = {"Bucket": "fraudscore-data", "Key": key}
    with Stubber(s3) as stub, Stubber(sagemaker) as nothing_expected:
        sse = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": config().kms_key_id}
        stub.add_response(
            "create_multipart_upload",
            {**where, "UploadId": "u-1"},
            {**where, **sse, "BucketKeyEnabled": True},
        )
        stub.add_client_error("upload_part", "InternalError", "We encountered an internal error")
        stub.add_response("abort_multipart_upload", {}, {**where, "UploadId": "u-1"})
        with pytest.raises(TuningError) as caught:
            train_on_sagemaker(
                sagemaker, s3, config(region=REGION), np.zeros((500, 3)), np.zeros((9, 3)),
                k=2, when=WHEN, part_size=1024,
            )  # fmt: skip
        stub.assert_no_pending_responses()
        nothing_expected.assert_no_pending_responses()
    assert str(caught.value) == (
        f"upload of the train split: UploadPart 1 of s3://fraudscore-data/{key} failed: "
        "InternalError: We encountered an internal error; the multipart upload was aborted"
    )


def test_the_dry_run_plan_of_a_pipeline_run_is_the_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("moto.s3.models.S3_UPLOAD_PART_MIN_SIZE", 1)
    data = tmp_path / "train.csv"
    write_csv(generate(DemoConfig(rows=2000, seed=4)), data)
    request = TrainRequest(data=data, label_column=LABEL_COLUMN, features=DEMO_FEATURES, k=4)
    c = config(region=REGION, kms_key_id=KEY)
    part_size = 32 * 1024  # the train split is several parts, the test split one PutObject
    plan = sagemaker_plan(request, c, part_size=part_size)
    rng = np.random.default_rng(3)

    def centroids(params: dict[str, Any]) -> np.ndarray:
        static = params["TrainingJobDefinition"]["StaticHyperParameters"]
        return rng.normal(size=(int(static["k"]), int(static["feature_dim"]))).astype(np.float32)

    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket="fraudscore-data")
        sagemaker = boto3.client("sagemaker", region_name=REGION)
        play_sagemaker(sagemaker, s3, centroids)
        sent = s3_requests(s3)
        target = SageMakerTarget(sagemaker, s3, c, poll_s=0, part_size=part_size)
        train(dataclasses.replace(request, sagemaker=target), open_registry(tmp_path / "reg"))
    assert [step["operation"] for step in plan][:7] == [
        "CreateMultipartUpload", *["UploadPart"] * 4, "CompleteMultipartUpload", "PutObject"
    ]  # fmt: skip
    assert_plan_matches(plan, sent)
