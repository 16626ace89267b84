"""``fraudscore deploy`` and ``train --mode sagemaker``: the dry run prints every request
without AWS; a real run uploads the registered artifact (SSE-KMS) and deploys it (moto:
emulated S3 and SageMaker). AWS settings come from flags over ``FRAUDSCORE_*`` variables."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from service.cli import main
from training.demo import DEMO_FEATURES, LABEL_COLUMN, DemoConfig, generate, write_csv
from training.pipeline import TrainRequest, train
from training.registry import open_registry

REGION = "us-east-1"
KEY = "arn:aws:kms:us-east-1:123456789012:key/abcd"
AWS_ENV = {
    "FRAUDSCORE_AWS_REGION": REGION,
    "FRAUDSCORE_S3_BUCKET": "fraudscore-data",
    "FRAUDSCORE_S3_PREFIX": "fraudscore",
    "FRAUDSCORE_SAGEMAKER_ROLE_ARN": "arn:aws:iam::123456789012:role/fraudscore-execution",
    "FRAUDSCORE_KMS_KEY_ID": KEY,
    "FRAUDSCORE_TAGS": json.dumps({"Project": "fraudscore", "Owner": "fraud-team"}),
}


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("deploy")
    write_csv(generate(DemoConfig(rows=2000, seed=4)), root / "train.csv")
    outcome = train(
        TrainRequest(
            data=root / "train.csv", label_column=LABEL_COLUMN, features=DEMO_FEATURES, k=4
        ),
        open_registry(root / "registry"),
        progress=False,
    )
    return root / "registry", outcome.manifest.model_version


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FRAUDSCORE_"))}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env={**clean, **env, "AWS_CONFIG_FILE": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_dry_run_prints_every_request_without_aws(registry_dir: tuple[Path, str]) -> None:
    registry, version = registry_dir
    result = run_cli(
        "deploy", "--model-version", version, "--registry", str(registry), "--dry-run",
        env=AWS_ENV,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert [step["operation"] for step in plan] == [
        "PutObject",
        "CreateModel",
        "CreateEndpointConfig",
        "CreateEndpoint",
        "UpdateEndpoint",
    ]
    upload = plan[0]["request"]
    assert upload["ServerSideEncryption"] == "aws:kms"
    assert upload["SSEKMSKeyId"] == KEY
    assert upload["Key"] == f"fraudscore/models/{version}/model.tar.gz"
    assert plan[1]["request"]["PrimaryContainer"]["ModelDataUrl"].endswith(upload["Key"])
    assert plan[2]["request"]["KmsKeyId"] == KEY
    for step in plan[1:4]:
        tags = {t["Key"]: t["Value"] for t in step["request"]["Tags"]}
        assert tags["Owner"] == "fraud-team"


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("FRAUDSCORE_S3_BUCKET", "missing S3 bucket: pass --bucket or set FRAUDSCORE_S3_BUCKET"),
        (
            "FRAUDSCORE_SAGEMAKER_ROLE_ARN",
            "missing SageMaker execution role: pass --role-arn or set "
            "FRAUDSCORE_SAGEMAKER_ROLE_ARN",
        ),
        ("FRAUDSCORE_AWS_REGION", "missing AWS region: pass --region or set FRAUDSCORE_AWS_REGION"),
    ],
)
def test_a_missing_setting_is_a_usage_error_naming_flag_and_variable(
    registry_dir: tuple[Path, str], missing: str, message: str
) -> None:
    registry, version = registry_dir
    env = {k: v for k, v in AWS_ENV.items() if k != missing}
    result = run_cli(
        "deploy", "--model-version", version, "--registry", str(registry), "--dry-run", env=env
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"fraudscore: error: {message}"
    assert result.stdout == ""


FLAGS = {
    "--region": "eu-west-1",
    "--bucket": "flag-bucket",
    "--prefix": "flag-prefix",
    "--role-arn": "arn:aws:iam::111122223333:role/flag-role",
    "--kms-key-id": "arn:aws:kms:eu-west-1:111122223333:key/flag",
}


def flags(**tags: str) -> list[str]:
    """All five AWS flags, then ``--tag`` for each keyword."""
    pairs = [*FLAGS.items(), *(("--tag", f"{k}={v}") for k, v in tags.items())]
    return [word for pair in pairs for word in pair]


def test_flags_override_the_environment_in_the_deploy_plan(
    registry_dir: tuple[Path, str],
) -> None:
    registry, version = registry_dir
    result = run_cli(
        "deploy", "--model-version", version, "--registry", str(registry), "--dry-run",
        *flags(Owner="flag-team", CostCenter="cc-1"), env=AWS_ENV,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    upload, model, endpoint_config = (step["request"] for step in json.loads(result.stdout)[:3])
    assert upload["Bucket"] == "flag-bucket"
    assert upload["Key"] == f"flag-prefix/models/{version}/model.tar.gz"
    assert upload["SSEKMSKeyId"] == FLAGS["--kms-key-id"]
    assert model["ExecutionRoleArn"] == FLAGS["--role-arn"]
    assert ".dkr.ecr.eu-west-1." in model["PrimaryContainer"]["Image"]
    assert endpoint_config["KmsKeyId"] == FLAGS["--kms-key-id"]
    tags = {t["Key"]: t["Value"] for t in endpoint_config["Tags"]}
    # FRAUDSCORE_TAGS gives Project and Owner; --tag overrides Owner and adds CostCenter.
    assert {k: tags[k] for k in ("Project", "Owner", "CostCenter")} == {
        "Project": "fraudscore",
        "Owner": "flag-team",
        "CostCenter": "cc-1",
    }


def test_one_flag_fills_in_a_missing_variable(registry_dir: tuple[Path, str]) -> None:
    registry, version = registry_dir
    env = {k: v for k, v in AWS_ENV.items() if k != "FRAUDSCORE_S3_BUCKET"}
    result = run_cli(
        "deploy", "--model-version", version, "--registry", str(registry), "--dry-run",
        "--bucket", "flag-bucket", env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    upload = json.loads(result.stdout)[0]["request"]
    assert (upload["Bucket"], upload["SSEKMSKeyId"]) == ("flag-bucket", KEY)


@pytest.mark.parametrize("command", ["train", "deploy"])
def test_help_documents_each_aws_flag_with_its_variable(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, variable in (
        ("--region REGION", "FRAUDSCORE_AWS_REGION"),
        ("--bucket BUCKET", "FRAUDSCORE_S3_BUCKET"),
        ("--prefix PREFIX", "FRAUDSCORE_S3_PREFIX"),
        ("--role-arn ARN", "FRAUDSCORE_SAGEMAKER_ROLE_ARN"),
        ("--kms-key-id KEY", "FRAUDSCORE_KMS_KEY_ID"),
        ("--tag KEY=VALUE", "FRAUDSCORE_TAGS"),
    ):
        assert re.search(rf"{flag} [^$]*\${variable}\b", text), flag


@pytest.mark.usefixtures("fake_aws")
def test_a_deploy_uploads_encrypted_and_brings_the_endpoint_up(
    registry_dir: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, version = registry_dir
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket="fraudscore-data")
        code = main(
            ["deploy", "--model-version", version, "--registry", str(registry), "--endpoint-name",
             "fraudscore-cli"]
        )  # fmt: skip
        assert code == 0
        head = s3.head_object(
            Bucket="fraudscore-data", Key=f"fraudscore/models/{version}/model.tar.gz"
        )
        sagemaker = boto3.client("sagemaker", region_name=REGION)
        endpoint = sagemaker.describe_endpoint(EndpointName="fraudscore-cli")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"] == KEY
    assert endpoint["EndpointStatus"] == "InService"


def test_training_on_sagemaker_names_a_missing_setting(
    registry_dir: tuple[Path, str], tmp_path: Path
) -> None:
    registry, _ = registry_dir
    data = registry.parent / "train.csv"
    env = {k: v for k, v in AWS_ENV.items() if k != "FRAUDSCORE_KMS_KEY_ID"}
    result = run_cli(
        "--no-progress", "train", "--data", str(data), "--mode", "sagemaker",
        "--registry", str(tmp_path / "registry"), env=env,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "fraudscore: error: missing KMS key: pass --kms-key-id or set FRAUDSCORE_KMS_KEY_ID"
    )
    assert not (tmp_path / "registry").exists()
    local = run_cli(
        "train", "--data", str(data), "--endpoint-name", "x",
        "--registry", str(tmp_path / "registry"), env=env,
    )  # fmt: skip
    assert local.stderr.strip() == "fraudscore: error: --endpoint-name needs --mode sagemaker"
    # An AWS flag in local mode would be ignored: refused instead of a silent guess.
    local = run_cli(
        "train", "--data", str(data), "--kms-key-id", "k",
        "--registry", str(tmp_path / "registry"), env=env,
    )  # fmt: skip
    assert local.stderr.strip() == "fraudscore: error: --kms-key-id needs --mode sagemaker"
    assert not (tmp_path / "registry").exists()


def test_the_training_dry_run_prints_the_run_in_order_without_aws(
    registry_dir: tuple[Path, str], tmp_path: Path
) -> None:
    registry, version = registry_dir
    data = registry.parent / "train.csv"
    features = Path(__file__).resolve().parents[1] / "examples" / "features.json"
    result = run_cli(
        "--no-progress", "train", "--data", str(data), "--features", str(features), "--k", "4",
        "--mode", "sagemaker", "--endpoint-name", "fraudscore", "--max-jobs", "20", "--dry-run",
        "--registry", str(tmp_path / "registry"), env=AWS_ENV,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert [step["operation"] for step in plan] == [
        "PutObject",
        "PutObject",
        "CreateHyperParameterTuningJob",
        "GetObject",
        "CreateModel",
        "CreateEndpointConfig",
        "CreateEndpoint",
        "UpdateEndpoint",
    ]
    train_put, test_put, tuning = (step["request"] for step in plan[:3])
    assert train_put["SSEKMSKeyId"] == KEY
    assert train_put["Key"].endswith("/train/train.csv")
    # "<1600 transformed train rows as CSV, 123456 bytes>": the whole split, one request.
    rows = [int(put["Body"].split()[0].lstrip("<")) for put in (train_put, test_put)]
    assert sum(rows) == 2000
    assert all(re.fullmatch(r"<.*, \d+ bytes>", put["Body"]) for put in (train_put, test_put))
    definition = tuning["TrainingJobDefinition"]
    manifest = open_registry(registry).load_manifest(version)
    assert definition["StaticHyperParameters"]["k"] == "4"
    assert definition["StaticHyperParameters"]["feature_dim"] == str(manifest.feature_dim)
    assert (
        tuning["HyperParameterTuningJobConfig"]["ResourceLimits"]["MaxNumberOfTrainingJobs"] == 20
    )
    channel = definition["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"]
    assert train_put["Key"].startswith(channel.removeprefix("s3://fraudscore-data/"))
    assert not (tmp_path / "registry").exists()  # nothing registered


def test_the_training_dry_run_takes_every_setting_from_flags(
    registry_dir: tuple[Path, str], tmp_path: Path
) -> None:
    registry, _ = registry_dir
    data = registry.parent / "train.csv"
    result = run_cli(
        "--no-progress", "train", "--data", str(data), "--k", "4", "--mode", "sagemaker",
        "--dry-run", "--registry", str(tmp_path / "registry"), *flags(Owner="flag-team"),
        env={},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    train_put, _, tuning = (step["request"] for step in plan[:3])
    assert train_put["Bucket"] == "flag-bucket"
    assert train_put["Key"].startswith("flag-prefix/data/")
    assert train_put["SSEKMSKeyId"] == FLAGS["--kms-key-id"]
    definition = tuning["TrainingJobDefinition"]
    assert definition["RoleArn"] == FLAGS["--role-arn"]
    assert ".dkr.ecr.eu-west-1." in definition["AlgorithmSpecification"]["TrainingImage"]
    assert definition["ResourceConfig"]["VolumeKmsKeyId"] == FLAGS["--kms-key-id"]
    tags = {t["Key"]: t["Value"] for t in tuning["Tags"]}
    # No FRAUDSCORE_TAGS: the default tags, with --tag merged over them.
    assert {k: tags[k] for k in ("Project", "ManagedBy", "Owner")} == {
        "Project": "fraudscore",
        "ManagedBy": "fraudscore",
        "Owner": "flag-team",
    }
