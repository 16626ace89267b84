"""``POST /admin/retrain`` with ``mode: sagemaker``: the job process tunes on SageMaker (moto in
server mode on 127.0.0.1, with the trial played as in test_train_on_sagemaker), deploys the
winner to the endpoint, then activates it; the API and the job record are the local ones.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings
from tests.e2e.test_train_on_sagemaker import BUCKET, client, moto_server, play_trial  # noqa: F401
from tests.test_cli_deploy import AWS_ENV
from training.demo import DEMO_FEATURES, LABEL_COLUMN, DemoConfig, generate, write_csv
from training.registry import Registry

pytestmark = pytest.mark.usefixtures("fake_aws")
TOKEN = "sagemaker-admin-token"  # noqa: S105 - a test token
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_a_sagemaker_retrain_job_tunes_deploys_and_promotes(
    moto_server: str,  # noqa: F811 - the fixture of the module it comes from
    registry: Registry,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    play_trial(moto_server, monkeypatch)
    client("s3", moto_server).create_bucket(Bucket=BUCKET)
    for name, value in {**AWS_ENV, "AWS_ENDPOINT_URL": moto_server}.items():
        monkeypatch.setenv(name, value)  # the job process inherits them
    data = tmp_path / "train.csv"
    write_csv(generate(DemoConfig(rows=3000, seed=8)), data)
    before = registry.active()
    settings = Settings(
        registry=registry.location,
        admin_token=TOKEN,
        access_log=False,
        promotion_max_msd_increase=10.0,
    )
    body = {
        "data": str(data),
        "label_column": LABEL_COLUMN,
        "features": DEMO_FEATURES,
        "k": 6,
        "mode": "sagemaker",
        "tuning": {"max_jobs": 4, "max_parallel": 2},
        "endpoint_name": "fraudscore",
    }
    with TestClient(create_app(settings, registry=registry)) as api:
        started = api.post("/admin/retrain", json=body, headers=AUTH)
        assert started.status_code == 202, started.text
        job: dict[str, Any] = {}
        deadline = time.monotonic() + 120
        while job.get("state") not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
            job = api.get(started.headers["Location"], headers=AUTH).json()
    assert job["state"] == "succeeded", job
    result = job["result"]
    assert result["promoted"] is True, result
    assert job["progress"]["tuning_job_name"]
    assert job["progress"]["trials_total"] == 4
    pointer = registry.active()
    assert pointer is not None
    assert pointer != before
    assert pointer.model_version == result["model_version"]
    manifest = registry.load_manifest(pointer.model_version)
    assert manifest.source["kind"] == "sagemaker"
    endpoint = client("sagemaker", moto_server).describe_endpoint(EndpointName="fraudscore")
    assert endpoint["EndpointStatus"] == "InService"
    assert endpoint["EndpointConfigName"] == result["deployment"]["endpoint_config"]
    assert registry.activation(pointer.activation or 0).action == "train"
