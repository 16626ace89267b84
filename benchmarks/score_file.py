"""score-file throughput against the CSV parsing limit, measured in the same run.

Baselines: ``pyarrow.csv.read_csv`` of the same file (multi-threaded parse) and a streaming
``pyarrow.csv.open_csv`` pass (what score-file reads with). Target: score-file >= 0.5x the
plain read.

    .venv/bin/python benchmarks/score_file.py [--rows N] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.csv as pacsv

from service.file_scoring import score_file
from service.models import load_active
from training.demo import DEMO_FEATURES, LABEL_COLUMN, DemoConfig, generate, write_csv
from training.pipeline import TrainRequest, train
from training.registry import open_registry


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    """Fastest wall time of ``repeats`` calls (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def stream_read(path: Path) -> int:
    """Read the file batch by batch, as score-file does, and count rows."""
    rows = 0
    for batch in pacsv.open_csv(path):
        rows += batch.num_rows
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="200k rows, one repeat")
    args = parser.parse_args()
    rows = 200_000 if args.quick else args.rows
    repeats = 1 if args.quick else args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train_csv, source, target = root / "train.csv", root / "in.csv", root / "out.csv"
        write_csv(generate(DemoConfig(rows=50_000, seed=0)), train_csv)
        write_csv(generate(DemoConfig(rows=rows, seed=1)), source)
        registry = open_registry(root / "registry")
        train(
            TrainRequest(data=train_csv, label_column=LABEL_COLUMN, features=DEMO_FEATURES),
            registry,
        )
        model = load_active(registry)
        size_mb = source.stat().st_size / 1e6
        t_read = best_of(repeats, lambda: pacsv.read_csv(source))
        t_stream = best_of(repeats, lambda: stream_read(source))
        t_score = best_of(repeats, lambda: score_file(model, source, target))
    print(f"file: {rows:,} rows, {size_mb:.1f} MB")
    print(f"{'path':<34}{'seconds':>9}{'rows/s':>13}{'vs read_csv':>13}")
    for name, seconds in (
        ("pyarrow.csv.read_csv (baseline)", t_read),
        ("pyarrow.csv.open_csv stream", t_stream),
        ("fraudscore score-file", t_score),
    ):
        print(f"{name:<34}{seconds:>9.3f}{rows / seconds:>13,.0f}{t_read / seconds:>12.2f}x")
    ratio = t_read / t_score
    verdict = "meets" if ratio >= 0.5 else "MISSES"
    print(f"score-file throughput = {ratio:.2f}x read_csv ({verdict} the >= 0.5x target)")


if __name__ == "__main__":
    main()
