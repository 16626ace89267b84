"""The training pipeline with ``sagemaker=``: local passes, tuning on SageMaker (moto, with
the trial played by a hook), calibration here, deployment, then registration."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from tests.training.test_sagemaker_requests import config
from tests.training.test_sagemaker_training import play_sagemaker
from training.demo import DEMO_FEATURES, LABEL_COLUMN, DemoConfig, generate, write_csv
from training.pipeline import SageMakerTarget, TrainRequest, train
from training.registry import open_registry
from training.sagemaker_deploy import DeployError

pytestmark = pytest.mark.usefixtures("fake_aws")
REGION = "us-east-1"
BUCKET = "fraudscore-data"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sm") / "train.csv"
    write_csv(generate(DemoConfig(rows=3000, seed=2)), path)
    return path


def first_rows_of_train_split(s3: Any) -> Any:
    """The trial's model: the first k rows of the uploaded train split (a valid k-means start)."""

    def centroids(params: dict[str, Any]) -> np.ndarray:
        k = int(params["TrainingJobDefinition"]["StaticHyperParameters"]["k"])
        uri = params["TrainingJobDefinition"]["InputDataConfig"][0]["DataSource"]["S3DataSource"]
        key = uri["S3Uri"].removeprefix(f"s3://{BUCKET}/") + "/train.csv"
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        return np.loadtxt(io.BytesIO(body), delimiter=",", max_rows=k).astype(np.float32)

    return centroids


def test_a_sagemaker_run_is_calibrated_deployed_and_registered(data: Path, tmp_path: Path) -> None:
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET)
        sagemaker = boto3.client("sagemaker", region_name=REGION)
        play_sagemaker(sagemaker, s3, first_rows_of_train_split(s3))
        target = SageMakerTarget(
            sagemaker, s3, config(region=REGION), endpoint_name="fraudscore", poll_s=0
        )
        registry = open_registry(tmp_path / "registry")
        outcome = train(
            TrainRequest(
                data=data, label_column=LABEL_COLUMN, features=DEMO_FEATURES, k=5,
                max_jobs=4, sagemaker=target,
            ),
            registry,
        )  # fmt: skip
        endpoint = sagemaker.describe_endpoint(EndpointName="fraudscore")
    source = outcome.manifest.source
    assert source["kind"] == "sagemaker"
    assert source["training_job"].endswith("-001-abcd")
    assert source["endpoint"] == "fraudscore"
    assert endpoint["EndpointConfigName"] == source["endpoint_config"]
    assert outcome.activated
    pointer = registry.active()
    assert pointer is not None
    assert pointer.model_version == outcome.manifest.model_version
    bundle = registry.load_bundle(pointer.model_version)
    assert bundle.centroids.shape == (5, outcome.manifest.feature_dim)
    assert outcome.manifest.metrics["test:msd"] > 0
    assert outcome.manifest.hyperparameters["extra_center_factor"] == "6"


def test_a_failed_deployment_registers_nothing(data: Path, tmp_path: Path) -> None:
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET)
        sagemaker = boto3.client("sagemaker", region_name=REGION)
        play_sagemaker(sagemaker, s3, first_rows_of_train_split(s3))
        # The control plane refuses the model (quota): SageMaker's answer, from botocore's stub.
        deployer = boto3.client("sagemaker", region_name=REGION)
        stubber = Stubber(deployer)
        stubber.add_client_error("create_model", "ResourceLimitExceeded", "model quota")
        stubber.activate()

        class Split:
            """Tuning calls go to moto, deployment calls to the stubbed client."""

            def __getattr__(self, name: str) -> Any:
                return getattr(deployer if name.startswith("create_model") else sagemaker, name)

        registry = open_registry(tmp_path / "registry")
        with pytest.raises(DeployError, match="create_model: ResourceLimitExceeded"):
            train(
                TrainRequest(
                    data=data, label_column=LABEL_COLUMN, features=DEMO_FEATURES, k=5,
                    max_jobs=2,
                    sagemaker=SageMakerTarget(
                        Split(), s3, config(region=REGION), endpoint_name="fraudscore", poll_s=0
                    ),
                ),
                registry,
            )  # fmt: skip
    assert registry.active() is None
    assert registry.model_versions() == []
