"""The fraudscore command line, run as users run it: in a subprocess."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

FEATURES = Path(__file__).resolve().parents[1] / "examples" / "features.json"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``fraudscore ARGS`` without progress bars."""
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "--no-progress", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """Assert a failure with exactly one line on stderr and no traceback; return that line."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with demo data (data.csv) and a registry holding one active model."""
    root = tmp_path_factory.mktemp("cli")
    assert (
        run("demo-data", "--rows", "4000", "--out", "data.csv", "--seed", "3", cwd=root).returncode
        == 0
    )
    result = run(
        "train",
        "--data",
        "data.csv",
        "--label-column",
        "is_fraud",
        "--features",
        str(FEATURES),
        "--k",
        "5",
        "--registry",
        "reg",
        cwd=root,
    )
    assert result.returncode == 0, result.stderr
    return root


def test_train_prints_summary_with_label_metrics(trained: Path) -> None:
    listing = run("models", "list", "--json", "--registry", "reg", cwd=trained)
    models = json.loads(listing.stdout)
    assert len(models) == 1
    assert models[0]["active"] is True
    assert models[0]["active_thresholds_version"] == 1
    assert models[0]["k"] == 5
    assert models[0]["metrics"]["test:msd"] > 0


def test_score_file_keeps_columns_and_adds_verdicts(trained: Path) -> None:
    result = run(
        "score-file",
        "--in",
        "data.csv",
        "--out",
        "out/scored.csv",
        "--registry",
        "reg",
        cwd=trained,
    )
    assert result.returncode == 0, result.stderr
    with (trained / "data.csv").open() as fh:
        source = list(csv.DictReader(fh))
    with (trained / "out" / "scored.csv").open() as fh:
        scored = list(csv.DictReader(fh))
    assert len(scored) == len(source)
    extra = ["cluster", "distance", "threshold", "score", "anomalous", "top_reason"]
    assert list(scored[0]) == list(source[0]) + extra
    assert [r["transaction_id"] for r in scored] == [r["transaction_id"] for r in source]
    for row in scored:
        assert 0 <= int(row["cluster"]) < 5
        anomalous = row["anomalous"] == "true"
        assert anomalous == (float(row["score"]) > 1.0) or float(row["score"]) == 1.0
        assert row["top_reason"]
    flagged = sum(r["anomalous"] == "true" for r in scored)
    # Default policy: about 1 % of rows flagged on data like the training data.
    assert 0.002 * len(scored) < flagged < 0.06 * len(scored)
    assert not list((trained / "out").glob(".*partial"))


def test_models_list_marks_active(trained: Path) -> None:
    result = run("models", "list", "--registry", "reg", cwd=trained)
    assert result.returncode == 0
    active = [line for line in result.stdout.splitlines() if line.startswith("*")]
    assert len(active) == 1
    assert "1*" in active[0]


def test_every_command_has_help(tmp_path: Path) -> None:
    for command in (["demo-data"], ["train"], ["score-file"], ["models", "list"], ["demo"], []):
        result = run(*command, "--help", cwd=tmp_path)
        assert result.returncode == 0
        assert "usage: fraudscore" in result.stdout


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


NUMERIC_SPEC = json.dumps(
    {"fields": [{"name": "amount", "type": "numeric"}, {"name": "code", "type": "categorical"}]}
)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", ["empty"]),
        ("amount,code,amount\n1,a,2\n", ["duplicate", "amount"]),
        ("amount,other\n1,a\n", ["code"]),
        ("amount,code\n1,a\n2,b\nabc,c\n", ["amount", "row 3"]),
        ("amount,code\n1,a\nnan,b\n", ["amount", "row 2"]),
        ("amount,code\n1,a\n2,b\n3,c\ninf,d\n", ["amount", "row 4"]),
        ("amount,code\n1,a\n,b\n", ["amount", "row 2"]),
        ("amount,code\n", ["no data rows"]),
    ],
    ids=["empty", "duplicate-header", "missing-column", "text", "nan", "inf", "blank", "no-rows"],
)
def test_train_rejects_bad_csv_in_one_line(
    tmp_path: Path, content: str, expected: list[str]
) -> None:
    data = write(tmp_path / "bad.csv", content)
    spec = write(tmp_path / "spec.json", NUMERIC_SPEC)
    line = one_line_error(
        run(
            "train", "--data", str(data), "--features", str(spec), "--registry", "reg", cwd=tmp_path
        )
    )
    for word in expected:
        assert word in line, line
    assert not (tmp_path / "reg" / "ACTIVE").exists()


def test_train_rejects_missing_file(tmp_path: Path) -> None:
    line = one_line_error(run("train", "--data", "nope.csv", "--registry", "reg", cwd=tmp_path))
    assert "nope.csv" in line


def test_train_rejects_bad_label(tmp_path: Path) -> None:
    rows = "".join(f"{i},a,{i % 2}\n" for i in range(50)) + "7,b,2\n"
    data = write(tmp_path / "d.csv", "amount,code,y\n" + rows)
    spec = write(tmp_path / "spec.json", NUMERIC_SPEC)
    line = one_line_error(
        run(
            "train",
            "--data",
            str(data),
            "--features",
            str(spec),
            "--label-column",
            "y",
            "--k",
            "2",
            "--registry",
            "reg",
            cwd=tmp_path,
        )
    )
    assert "'y'" in line
    assert "row 51" in line


def test_train_rejects_unknown_hyperparameter_before_reading_data(tmp_path: Path) -> None:
    data = write(tmp_path / "d.csv", "amount\n" + "1\n" * 20)
    line = one_line_error(
        run(
            "train",
            "--data",
            str(data),
            "--hyperparameter",
            "mini_batch_siz=10",
            "--registry",
            "reg",
            cwd=tmp_path,
        )
    )
    assert "mini_batch_siz" in line


def test_train_rejects_bad_feature_spec(tmp_path: Path) -> None:
    data = write(tmp_path / "d.csv", "amount\n" + "1\n" * 20)
    spec = write(tmp_path / "spec.json", '{"fields": [{"name": "amount", "type": "numerik"}]}')
    line = one_line_error(
        run("train", "--data", str(data), "--features", str(spec), "--registry", "r", cwd=tmp_path)
    )
    assert "numerik" in line
    spec.write_text("{not json")
    line = one_line_error(
        run("train", "--data", str(data), "--features", str(spec), "--registry", "r", cwd=tmp_path)
    )
    assert "JSON" in line


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--data", "d.csv", "--k", "0"],
        ["train", "--data", "d.csv", "--quantile", "1.5"],
        ["train", "--data", "d.csv", "--outlying-weight", "-1"],
        ["train", "--data", "d.csv", "--outlying-weight", "inf"],
        ["demo-data", "--rows", "-3", "--out", "x.csv"],
        ["train"],
        ["frobnicate"],
    ],
)
def test_usage_errors_are_one_line(tmp_path: Path, args: list[str]) -> None:
    result = run(*args, cwd=tmp_path)
    line = one_line_error(result)
    assert result.returncode == 2
    assert "see --help" in line


def test_score_file_without_active_model(tmp_path: Path) -> None:
    data = write(tmp_path / "d.csv", "amount\n1\n")
    line = one_line_error(
        run("score-file", "--in", str(data), "--out", "o.csv", "--registry", "empty", cwd=tmp_path)
    )
    assert "no active model" in line


def test_score_file_bad_row_leaves_no_output(trained: Path, tmp_path: Path) -> None:
    lines = (trained / "data.csv").read_text().splitlines()
    header = lines[0].split(",")
    broken = lines[5].split(",")
    broken[header.index('"amount"')] = "twelve"
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([*lines[:5], ",".join(broken), *lines[6:]]) + "\n")
    out = tmp_path / "scored.csv"
    line = one_line_error(
        run(
            "score-file",
            "--in",
            str(bad),
            "--out",
            str(out),
            "--registry",
            str(trained / "reg"),
            cwd=trained,
        )
    )
    assert "amount" in line
    assert "row 5" in line
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [bad]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["serve", "--port", "70000"], "port"),
        (["serve", "--registry", "s3://bucket/prefix", "--demo-model"], "local registry"),
        (["serve", "--registry", "ftp://host/x"], "unsupported registry"),
    ],
)
def test_serve_refuses_bad_settings_in_one_line(
    tmp_path: Path, args: list[str], words: str
) -> None:
    line = one_line_error(run(*args, cwd=tmp_path))
    assert words in line
    assert not (tmp_path / "var").exists()
