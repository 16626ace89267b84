"""Score a CSV file with a model, streaming: input columns kept, verdict columns added."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from tqdm import tqdm

from service.scoring import ScoringModel, score_columns
from training.data import iter_chunks, read_header
from training.errors import DataError

OUTPUT_COLUMNS = ("cluster", "distance", "threshold", "score", "anomalous", "top_reason")


@dataclass(frozen=True)
class FileScoringSummary:
    """Counts from one scored file."""

    rows: int
    anomalous: int
    model_version: str
    thresholds_version: int
    output: Path


def score_file(
    model: ScoringModel,
    source: Path,
    target: Path,
    *,
    chunk_rows: int = 65_536,
    progress: bool = False,
) -> FileScoringSummary:
    """Stream ``source`` through ``model`` into ``target``.

    The output is written to a hidden temporary file beside ``target`` and renamed at the
    end, so a failure (bad row, full disk) never leaves a partial file under the real name.
    """
    header = read_header(source)
    clash = [c for c in OUTPUT_COLUMNS if c in header]
    if clash:
        raise DataError(
            f"input already has column(s) {', '.join(clash)}, which the output adds",
            file=str(source),
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    rows = anomalous = 0
    writer: pacsv.CSVWriter | None = None
    # Formatting CSV costs about as much as scoring; pyarrow releases the GIL while it
    # writes, so chunk N is written on a second thread while chunk N+1 is read and scored.
    # One write in flight at a time keeps the output in order and memory bounded.
    write_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="score-file-writer")
    in_flight: Future[None] | None = None
    try:
        with tqdm(desc="score", unit=" rows", disable=not progress, leave=False) as bar:
            for chunk in iter_chunks(
                source, model.spec.csv_schema(), chunk_rows=chunk_rows, keep_batch=True
            ):
                scored = score_columns(model, chunk.columns)
                if chunk.batch is None:  # keep_batch=True guarantees it; say so if not
                    raise RuntimeError("iter_chunks(keep_batch=True) returned no batch")
                table = pa.Table.from_batches([chunk.batch])
                for name, values in (
                    ("cluster", pa.array(scored.cluster, type=pa.int32())),
                    ("distance", pa.array(scored.distance, type=pa.float64())),
                    ("threshold", pa.array(scored.threshold, type=pa.float64())),
                    ("score", pa.array(scored.score, type=pa.float64())),
                    ("anomalous", pa.array(scored.anomalous, type=pa.bool_())),
                    ("top_reason", pa.array(scored.top_reason, type=pa.string())),
                ):
                    table = table.append_column(name, values)
                if writer is None:
                    writer = pacsv.CSVWriter(
                        partial,
                        table.schema,
                        write_options=pacsv.WriteOptions(quoting_style="needed"),
                    )
                if in_flight is not None:
                    in_flight.result()  # re-raises a failed write here, not later
                in_flight = write_pool.submit(writer.write_table, table)
                rows += table.num_rows
                anomalous += int(np.count_nonzero(scored.anomalous))
                bar.update(table.num_rows)
        if in_flight is not None:
            in_flight.result()
            in_flight = None
        if writer is not None:
            writer.close()
            writer = None
        partial.replace(target)
    finally:
        if in_flight is not None:
            in_flight.exception()  # wait for it: the file is closed and removed below
        write_pool.shutdown(wait=True)
        if writer is not None:
            writer.close()
        partial.unlink(missing_ok=True)
    return FileScoringSummary(
        rows=rows,
        anomalous=anomalous,
        model_version=model.model_version,
        thresholds_version=model.thresholds_version,
        output=target,
    )
