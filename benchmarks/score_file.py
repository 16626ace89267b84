"""score-file throughput against the CSV parsing limit, measured in the same run.

The baseline is a plain read of the same file with pandas, by each of its parsers: the C
engine (``pandas.read_csv`` as most users call it) and the pyarrow engine (multithreaded);
the faster of the two in each round is the honest limit. score-file reads, validates,
scores and writes a CSV with six more columns. Target: >= 0.5x the pandas read.

Timings on a shared machine drift with its other load, so the candidates run in rounds,
alternating (the order flips every round), and the report gives every round's ratio, their
median, and the ratio of the best times (each path's least disturbed run). CPU seconds
(all threads) are shown too: they move less with the load.

    .venv/bin/python benchmarks/score_file.py [--rows N] [--rounds R] [--quick] [--pyarrow]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow.csv as pacsv

from service.file_scoring import score_file
from service.models import load_active
from training.demo import DEMO_FEATURES, LABEL_COLUMN, DemoConfig, generate, write_csv
from training.pipeline import TrainRequest, train
from training.registry import open_registry

TARGET = 0.5


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the whole process) of one call."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu


def stream_read(path: Path) -> int:
    """Read the file batch by batch, as score-file's general path does, and count rows."""
    rows = 0
    for batch in pacsv.open_csv(path):
        rows += batch.num_rows
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="200k rows, 3 rounds")
    parser.add_argument(
        "--pyarrow", action="store_true", help="also time pyarrow's own reads, for information"
    )
    args = parser.parse_args()
    rows = 200_000 if args.quick else args.rows
    rounds = 3 if args.quick else args.rounds
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

        def scored() -> None:
            # Into a new file each time, as a run usually writes (replacing a file makes
            # the file system free the old one's pages first).
            target.unlink(missing_ok=True)
            score_file(model, source, target)

        candidates: dict[str, Callable[[], object]] = {
            "pandas, C engine": lambda: pd.read_csv(source),
            "pandas, pyarrow engine": lambda: pd.read_csv(source, engine="pyarrow"),
            "fraudscore score-file": scored,
        }
        if args.pyarrow:
            single = pacsv.ReadOptions(use_threads=False)
            candidates["pyarrow read_csv, 1 thread"] = lambda: pacsv.read_csv(
                source, read_options=single
            )
            candidates["pyarrow read_csv, all threads"] = lambda: pacsv.read_csv(source)
            candidates["pyarrow open_csv stream"] = lambda: stream_read(source)
        for fn in candidates.values():  # warm: page cache, imports, allocator
            fn()
        wall: dict[str, list[float]] = {name: [] for name in candidates}
        cpu: dict[str, list[float]] = {name: [] for name in candidates}
        order = list(candidates)
        for _ in range(rounds):
            for name in order:
                seconds, cpu_seconds = timed(candidates[name])
                wall[name].append(seconds)
                cpu[name].append(cpu_seconds)
            order.reverse()
        size_mb = source.stat().st_size / 1e6
    print(f"file: {rows:,} rows, {size_mb:.1f} MB; {rounds} rounds, alternating")
    print(f"{'path':<32}{'median s':>9}{'min s':>8}{'max s':>8}{'CPU s':>8}{'rows/s':>12}")
    for name in candidates:
        median = statistics.median(wall[name])
        print(
            f"{name:<32}{median:>9.3f}{min(wall[name]):>8.3f}{max(wall[name]):>8.3f}"
            f"{statistics.median(cpu[name]):>8.3f}{rows / median:>12,.0f}"
        )
    mine = wall["fraudscore score-file"]
    c_engine = wall["pandas, C engine"]
    best = [min(c, a) for c, a in zip(c_engine, wall["pandas, pyarrow engine"], strict=True)]
    for label, base in (("pandas C engine", c_engine), ("faster pandas engine", best)):
        ratios = [b / s for b, s in zip(base, mine, strict=True)]
        median = statistics.median(ratios)
        verdict = "meets" if median >= TARGET else "MISSES"
        print(
            f"score-file vs {label}: median {median:.2f}x ({verdict} the >= {TARGET}x target); "
            f"rounds {' '.join(f'{r:.2f}' for r in ratios)}; "
            f"{sum(r >= TARGET for r in ratios)}/{len(ratios)} rounds >= {TARGET}x; "
            f"best times {min(base) / min(mine):.2f}x"
        )


if __name__ == "__main__":
    main()
