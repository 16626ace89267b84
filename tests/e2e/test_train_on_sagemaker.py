"""``fraudscore train --mode sagemaker`` end to end against moto in server mode on 127.0.0.1.

The CLI runs as its own process and reaches moto through ``AWS_ENDPOINT_URL``, as it would
reach AWS. Emulated: S3 and the SageMaker control plane are moto's. moto finishes a tuning
job at once with a fake best job and trains nothing, so the server's CreateHyperParameter-
TuningJob is extended (moto's documented way to add behaviour) to play the trial: a training
job, named best, whose ``model.tar.gz`` (the first k rows of the uploaded train split) is
put in S3.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from moto.sagemaker.responses import SageMakerResponse

from tests.aws_fakes import create_trial_job, moto_server_on_loopback, name_best
from tests.test_cli_deploy import AWS_ENV, run_cli
from training.artifact import write_model_tar
from training.demo import DEMO_FEATURES, DemoConfig, generate, write_csv
from training.registry import open_registry

REGION = "us-east-1"
BUCKET = "fraudscore-data"


pytestmark = pytest.mark.usefixtures("fake_aws")


@pytest.fixture
def moto_server() -> Iterator[str]:
    with moto_server_on_loopback() as url:
        yield url


def client(service: str, url: str) -> Any:
    return boto3.client(service, region_name=REGION, endpoint_url=url)


def play_trial(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    original = SageMakerResponse.create_hyper_parameter_tuning_job

    def create_and_train(self: SageMakerResponse) -> Any:
        result = original(self)
        name = self._get_param("HyperParameterTuningJobName")
        definition = self._get_param("TrainingJobDefinition")
        k = int(definition["StaticHyperParameters"]["k"])
        s3, sagemaker = client("s3", url), client("sagemaker", url)
        train_uri = definition["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"]
        key = train_uri.removeprefix(f"s3://{BUCKET}/") + "/train.csv"
        rows = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        centroids = np.loadtxt(io.BytesIO(rows), delimiter=",", max_rows=k).astype(np.float32)
        job = f"{name}-001-trial"
        create_trial_job(sagemaker, job, definition, REGION)
        tuning = self.sagemaker_backend.hyper_parameter_tuning_jobs[name]
        name_best(tuning, job, 1.0, {"extra_center_factor": "5"})
        output = definition["OutputDataConfig"]["S3OutputPath"].removeprefix(f"s3://{BUCKET}/")
        s3.put_object(
            Bucket=BUCKET,
            Key=f"{output}/{job}/output/model.tar.gz",
            Body=write_model_tar(centroids),
        )
        return result

    monkeypatch.setattr(SageMakerResponse, "create_hyper_parameter_tuning_job", create_and_train)


def test_train_on_sagemaker_deploys_registers_and_activates(
    moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    play_trial(moto_server, monkeypatch)
    client("s3", moto_server).create_bucket(Bucket=BUCKET)
    data, features = tmp_path / "train.csv", tmp_path / "features.json"
    write_csv(generate(DemoConfig(rows=3000, seed=8)), data)
    features.write_text(json.dumps(DEMO_FEATURES))
    env = {
        **AWS_ENV,
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    result = run_cli(
        "--no-progress", "train", "--data", str(data), "--features", str(features), "--k", "5",
        "--label-column", "is_fraud", "--mode", "sagemaker", "--endpoint-name", "fraudscore",
        "--max-jobs", "4", "--registry", str(tmp_path / "registry"), env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "trained on SageMaker" in result.stdout
    registry = open_registry(tmp_path / "registry")
    pointer = registry.active()
    assert pointer is not None
    manifest = registry.load_manifest(pointer.model_version)
    assert manifest.source["kind"] == "sagemaker"
    assert manifest.source["endpoint"] == "fraudscore"
    sagemaker = client("sagemaker", moto_server)
    endpoint = sagemaker.describe_endpoint(EndpointName="fraudscore")
    assert endpoint["EndpointStatus"] == "InService"
    assert endpoint["EndpointConfigName"] == manifest.source["endpoint_config"]
    s3 = client("s3", moto_server)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    splits = [key for key in keys if key.endswith(("/train.csv", "/test.csv"))]
    assert len(splits) == 2
    for key in splits:
        head = s3.head_object(Bucket=BUCKET, Key=key)
        assert head["ServerSideEncryption"] == "aws:kms"
        assert head["SSEKMSKeyId"] == AWS_ENV["FRAUDSCORE_KMS_KEY_ID"]
