"""Following a tuning job: Stubber for the polling sequence and failures, moto (emulated
SageMaker, with its fake BestTrainingJob replaced) for the job-to-artifact path."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws
from moto.sagemaker.models import sagemaker_backends

from tests.aws_fakes import create_trial_job, name_best
from tests.training.test_sagemaker_requests import config, tuning_request
from training.errors import TuningError
from training.sagemaker_tuning import (
    TuningProgress,
    best_model,
    wait_for_tuning_job,
)

REGION = "us-east-1"
WHEN = datetime(2026, 11, 28, tzinfo=UTC)
NAME = "fraudscore-20261128-101500"


pytestmark = pytest.mark.usefixtures("fake_aws")


def described(status: str, done: int, best: float | None = None, **extra: Any) -> dict[str, Any]:
    response: dict[str, Any] = {
        "HyperParameterTuningJobName": NAME,
        "HyperParameterTuningJobArn": f"arn:aws:sagemaker:{REGION}:123456789012:tuning/{NAME}",
        "HyperParameterTuningJobConfig": tuning_request()["HyperParameterTuningJobConfig"],
        "HyperParameterTuningJobStatus": status,
        "CreationTime": WHEN,
        "TrainingJobStatusCounters": {"Completed": done, "InProgress": 2},
        "ObjectiveStatusCounters": {"Succeeded": done, "Pending": 2, "Failed": 0},
        **extra,
    }
    if best is not None:
        response["BestTrainingJob"] = {
            "TrainingJobName": f"{NAME[:20]}-007-abc",
            "TrainingJobArn": f"arn:aws:sagemaker:{REGION}:123456789012:training-job/x",
            "CreationTime": WHEN,
            "TrainingJobStatus": "Completed",
            "TunedHyperParameters": {"extra_center_factor": "7", "init_method": "kmeans++"},
            "FinalHyperParameterTuningJobObjectiveMetric": {
                "Type": "Minimize",
                "MetricName": "test:msd",
                "Value": best,
            },
        }
    return response


def test_polling_reports_progress_and_returns_the_best_job() -> None:
    client = boto3.client("sagemaker", region_name=REGION)
    seen: list[TuningProgress] = []
    with Stubber(client) as stubber:
        for response in (
            described("InProgress", 0),
            described("InProgress", 0),  # unchanged: not reported again
            described("InProgress", 3, best=2.5),
            described("Completed", 50, best=2.1),
        ):
            stubber.add_response(
                "describe_hyper_parameter_tuning_job",
                response,
                {"HyperParameterTuningJobName": NAME},
            )
        best = wait_for_tuning_job(
            client, NAME, poll_s=0, progress=seen.append, sleep=lambda _: None
        )
    assert [(p.status, p.done, p.total, p.best_msd) for p in seen] == [
        ("InProgress", 0, 50, None),
        ("InProgress", 3, 50, 2.5),
        ("Completed", 50, 50, 2.1),
    ]
    assert best["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] == 2.1


@pytest.mark.parametrize(
    ("response", "words"),
    [
        (
            described("Failed", 1, FailureReason="AlgorithmError: bad data"),
            "failed: AlgorithmError",
        ),
        (described("Completed", 0), "without a successful trial"),
        (described("Stopped", 4), "ended Stopped without a successful trial"),
    ],
)
def test_a_job_without_a_result_says_why(response: dict[str, Any], words: str) -> None:
    client = boto3.client("sagemaker", region_name=REGION)
    with Stubber(client) as stubber:
        stubber.add_response("describe_hyper_parameter_tuning_job", response)
        with pytest.raises(TuningError, match=words):
            wait_for_tuning_job(client, NAME, sleep=lambda _: None)


def test_waiting_gives_up_after_the_timeout() -> None:
    client = boto3.client("sagemaker", region_name=REGION)
    ticks = iter([0.0, 50.0, 100.0])
    with Stubber(client) as stubber:
        for _ in range(2):
            stubber.add_response("describe_hyper_parameter_tuning_job", described("InProgress", 1))
        with pytest.raises(TuningError, match="still InProgress after 60 s"):
            wait_for_tuning_job(
                client, NAME, timeout_s=60, sleep=lambda _: None, clock=lambda: next(ticks)
            )


def test_the_best_job_leads_to_its_artifact_on_moto() -> None:
    with mock_aws():
        client = boto3.client("sagemaker", region_name=REGION)
        c = config(region=REGION)
        request = tuning_request(config=c)
        client.create_hyper_parameter_tuning_job(**request)
        job = "fraudscore-20261128-007-abc"
        definition = request["TrainingJobDefinition"]
        create_trial_job(client, job, definition, REGION)
        # moto's BestTrainingJob is a hard-coded fake: name the real trial instead.
        backend = sagemaker_backends["123456789012"][REGION]
        tuning = backend.hyper_parameter_tuning_jobs[NAME]
        name_best(tuning, job, 2.25, {"extra_center_factor": "7"})
        best = best_model(client, wait_for_tuning_job(client, NAME, sleep=lambda _: None))
    assert best.training_job_name == job
    assert best.objective == 2.25
    assert best.hyperparameters == {"extra_center_factor": "7"}
    assert (
        best.model_data_url
        == f"{definition['OutputDataConfig']['S3OutputPath']}/{job}/output/model.tar.gz"
    )
