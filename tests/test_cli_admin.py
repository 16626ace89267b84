"""``fraudscore recalibrate``, ``models promote|rollback`` and ``jobs list|show|cancel``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.test_cli import FEATURES, run
from training.jobs import JobStore
from training.registry import open_registry


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-admin")
    assert run("demo-data", "--rows", "3000", "--out", "data.csv", cwd=root).returncode == 0
    result = run(
        "train", "--data", "data.csv", "--label-column", "is_fraud", "--features", str(FEATURES),
        "--k", "5", "--registry", "reg", cwd=root,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return root


@pytest.fixture
def work(trained: Path, tmp_path: Path) -> Path:
    shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
    return tmp_path


def test_recalibrate_dry_run_then_for_real_then_roll_back(work: Path) -> None:
    registry = open_registry(work / "reg")
    before = registry.active()
    assert before is not None
    dry = run("recalibrate", "--quantile", "0.95", "--dry-run", "--registry", "reg", cwd=work)
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert report["dry_run"] is True
    assert len(report["clusters"]) == 5
    assert registry.active() == before
    audit = [json.loads(line) for line in dry.stderr.splitlines()]
    assert [(a["action"], a["dry_run"]) for a in audit] == [("recalibrate", True)]
    assert audit[0]["who"].startswith("user:")

    real = run("recalibrate", "--target-alert-rate", "0.02", "--registry", "reg", cwd=work)
    assert real.returncode == 0, real.stderr
    assert json.loads(real.stdout)["new_thresholds_version"] == before.thresholds_version + 1
    assert registry.active() == type(before)(before.model_version, before.thresholds_version + 1)

    back = run("models", "rollback", "--registry", "reg", cwd=work)
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout)["active"]["thresholds_version"] == before.thresholds_version
    assert registry.active() == before

    again = run("models", "rollback", "--registry", "reg", cwd=work)
    assert again.returncode == 1
    assert again.stderr.strip().startswith("fraudscore: error: nothing to roll back to")


def test_promote_a_thresholds_version_and_refuse_unknown_ones(work: Path) -> None:
    registry = open_registry(work / "reg")
    before = registry.active()
    assert before is not None
    assert run("recalibrate", "--quantile", "0.9", "--registry", "reg", cwd=work).returncode == 0
    promoted = run(
        "models", "promote", before.model_version, "--thresholds-version",
        str(before.thresholds_version), "--registry", "reg", cwd=work,
    )  # fmt: skip
    assert promoted.returncode == 0, promoted.stderr
    assert registry.active() == before
    unknown = run("models", "promote", "no-such-model", "--registry", "reg", cwd=work)
    assert unknown.returncode == 1
    assert "no-such-model" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1


def test_recalibrate_sets_the_outlying_weight_and_keeps_it_after(work: Path) -> None:
    registry = open_registry(work / "reg")
    model = registry.active()
    assert model is not None
    assert registry.load_thresholds(model.model_version, 1).policy.outlying_weight == 1.0
    for args, version, expected in (
        (["--outlying-weight", "0"], 2, 0.0),
        ([], 3, 0.0),  # carried over
        (["--outlying-weight", "2.5"], 4, 2.5),
    ):
        result = run(
            "recalibrate", "--target-alert-rate", "0.01", *args, "--registry", "reg", cwd=work
        )
        assert result.returncode == 0, result.stderr
        stored = registry.load_thresholds(model.model_version, version)
        assert stored.policy.outlying_weight == expected


def test_recalibrate_usage_errors_exit_2(work: Path) -> None:
    for args in (
        ["recalibrate", "--registry", "reg"],
        ["recalibrate", "--quantile", "0.9", "--outlying-weight", "nan", "--registry", "reg"],
        ["recalibrate", "--quantile", "0.9", "--target-alert-rate", "0.01", "--registry", "reg"],
        ["recalibrate", "--quantile", "1.5", "--registry", "reg"],
    ):
        result = run(*args, cwd=work)
        assert result.returncode == 2, (args, result.stderr)


def test_jobs_list_show_and_cancel(work: Path) -> None:
    empty = run("jobs", "list", "--registry", "reg", cwd=work)
    assert empty.returncode == 0
    assert empty.stdout.strip() == "no jobs"
    store = JobStore(open_registry(work / "reg").storage)
    record = store.new("retrain", {"data": "data.csv"}, requested_by="user:ops")
    store.finish(record, "failed", error="reading data: boom")
    listed = run("jobs", "list", "--registry", "reg", cwd=work)
    assert record.job_id in listed.stdout
    assert "failed" in listed.stdout
    assert "boom" in listed.stdout
    shown = run("jobs", "show", record.job_id, "--registry", "reg", cwd=work)
    assert json.loads(shown.stdout)["error"] == "reading data: boom"
    ended = run("jobs", "cancel", record.job_id, "--registry", "reg", cwd=work)
    assert ended.returncode == 1
    assert "already ended" in ended.stderr
    missing = run("jobs", "show", "20261128T120000Z-1a2b3c4d", "--registry", "reg", cwd=work)
    assert missing.returncode == 1
    assert "no job" in missing.stderr
