"""moto in server mode for tests, and SageMaker's part where moto does not play it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests
from moto.server import ThreadedMotoServer

from training.sagemaker_requests import image_uri


def isolate_from_aws(env: pytest.MonkeyPatch, *, region: str, secret: str = "testing") -> None:  # noqa: S107 - a fake
    """Fake credentials and region; no profile, config file or endpoint from the host."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        env.setenv(name, "testing")
    env.setenv("AWS_SECRET_ACCESS_KEY", secret)
    env.setenv("AWS_DEFAULT_REGION", region)
    env.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    env.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "FRAUDSCORE_KMS_KEY_ID",
    ):
        env.delenv(name, raising=False)


@contextmanager
def moto_server_on_loopback() -> Iterator[str]:
    """A moto server on 127.0.0.1 with an empty account; yields its URL, stops it after.

    Every moto server in one process shares moto's backends, so the account is
    reset on the way in and out: otherwise a resource another test created (an
    endpoint, a bucket) changes what this test's calls do.
    """
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    try:
        requests.post(f"{url}/moto-api/reset", timeout=10).raise_for_status()
        yield url
    finally:
        requests.post(f"{url}/moto-api/reset", timeout=10)
        server.stop()


def create_trial_job(sagemaker: Any, job: str, definition: dict[str, Any], region: str) -> None:
    """A finished training job under a tuning job's definition (moto completes it at once)."""
    sagemaker.create_training_job(
        TrainingJobName=job,
        AlgorithmSpecification={"TrainingImage": image_uri(region), "TrainingInputMode": "File"},
        RoleArn=definition["RoleArn"],
        InputDataConfig=definition["InputDataConfig"],
        OutputDataConfig=definition["OutputDataConfig"],
        ResourceConfig=definition["ResourceConfig"],
        StoppingCondition=definition["StoppingCondition"],
    )


def name_best(tuning: Any, job: str, msd: float, tuned: dict[str, str]) -> None:
    """Replace moto's hard-coded ``BestTrainingJob`` of a tuning job with a real trial."""
    tuning.best_training_job = {
        **tuning.best_training_job,
        "TrainingJobName": job,
        "TunedHyperParameters": tuned,
        "FinalHyperParameterTuningJobObjectiveMetric": {
            "Type": "Minimize",
            "MetricName": "test:msd",
            "Value": msd,
        },
    }
