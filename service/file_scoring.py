"""Score a CSV file with a model, streaming: input columns kept, verdict columns added.

Each output row is the input row's text, then ``cluster, distance, threshold, score,
anomalous, top_reason``. The verdicts are equal bit for bit to those of
:func:`service.scoring.score_columns` (:mod:`service.column_verdicts` computes them with the
same operations in the same order; numbers are written as the shortest text that
reads back equal), and nothing is computed that the output does not need: no per-row
Python objects.

Two paths, both parsing the file once (:mod:`service.block_scoring` scores a block of
either kind, :mod:`service.csv_output` writes its text):

- fast: when every line is one record (no blank line, no value spanning lines, no bad
  value; line ends LF, or CR LF throughout a block), blocks of lines are parsed for the
  model's columns only (by a C kernel where the lines are simple, :mod:`service.line_reader`)
  and each line is copied to the output as it is, less its line end (the output's are LF);
- general: otherwise, the file is read as text by :func:`training.data.iter_text`, re-quoted
  by pyarrow's CSV writer, and bad values are reported with file, column and row.

The fast path hands over to the general one (from the start) the moment a block does not
qualify. Work overlaps on threads (numpy, pyarrow, the C kernels and file I/O release the
GIL): the calling thread reads and writes in order while a small pool parses, scores and
formats blocks.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import csv
import functools
import os
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from service.block_scoring import OUTPUT_COLUMNS, BlockScorer, NotLines, ScoredText
from service.scoring import ScoringModel
from training.data import iter_text, read_header, require_columns
from training.errors import DataError

__all__ = ["OUTPUT_COLUMNS", "FileScoringSummary", "score_file"]

# Threads that parse, score and format blocks (the calling thread reads and writes), and
# blocks in flight: enough to keep every core busy, few enough to bound memory.
_WORKERS = min(max(os.cpu_count() or 2, 2), 8)
_IN_FLIGHT = 2 * _WORKERS
# Bytes read at first: the header line and enough rows to size the blocks. Blocks stay
# well below the 2 GiB that pyarrow's buffers and views address with 32-bit offsets.
_SAMPLE_BYTES = 1 << 20
_MAX_BLOCK_BYTES = 1 << 28


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
    chunk_rows: int = 32_768,
    progress: bool = False,
) -> FileScoringSummary:
    """Stream ``source`` through ``model`` into ``target``, about ``chunk_rows`` rows a block.

    The output is written to a hidden temporary file beside ``target`` and renamed at the
    end, so a failure (bad row, full disk) never leaves a partial file under the real name.
    The default block size is a measured balance: larger blocks touch more fresh memory
    (each page faulted in and zeroed by the kernel), smaller ones pay more per block.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    header = read_header(source)
    clash = [c for c in OUTPUT_COLUMNS if c in header]
    if clash:
        raise DataError(
            f"input already has column(s) {', '.join(clash)}, which the output adds",
            file=str(source),
        )
    require_columns(header, model.spec.csv_schema().columns, file=os.fspath(source))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    # The pool is the parallelism: BLAS threads of their own would only spin against it.
    blas = threadpool_limits(limits=1, user_api="blas")
    pool = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="score-file")
    try:
        scorer = BlockScorer(model, header, os.fspath(source))
        try:
            with contextlib.closing(_line_tasks(scorer, source, chunk_rows)) as tasks:
                rows, anomalous = _write(partial, scorer.header_line, pool, tasks, progress)
        except NotLines:
            # Not a file of one record per line, or a bad value somewhere: the general path,
            # from the start, which also names the first bad row.
            with contextlib.closing(_batch_tasks(scorer, source, chunk_rows)) as tasks:
                rows, anomalous = _write(partial, scorer.header_line, pool, tasks, progress)
        partial.replace(target)
    finally:
        pool.shutdown(wait=True)
        blas.restore_original_limits()
        partial.unlink(missing_ok=True)
    return FileScoringSummary(
        rows=rows,
        anomalous=anomalous,
        model_version=model.model_version,
        thresholds_version=model.thresholds_version,
        output=target,
    )


# A block of the file to score.
_Task = Callable[[], ScoredText]


def _write(
    partial: Path, header_line: pa.Buffer, pool: Executor, tasks: Iterator[_Task], progress: bool
) -> tuple[int, int]:
    """Run ``tasks`` on ``pool`` and write their text to ``partial`` in order: (rows, anomalous).

    Reading (the iterator) and writing stay on this thread; a few tasks run meanwhile.
    """
    rows = anomalous = 0
    pending: collections.deque[Future[ScoredText]] = collections.deque()
    try:
        with (
            partial.open("wb") as out,
            tqdm(desc="score", unit=" rows", disable=not progress, leave=False) as bar,
        ):
            out.write(header_line)

            def write(done: ScoredText) -> None:
                nonlocal rows, anomalous
                for text in done.texts:
                    out.write(text)
                rows += done.rows
                anomalous += done.anomalous
                bar.update(done.rows)

            while True:
                try:
                    task = next(tasks)
                except StopIteration:
                    break
                except Exception:
                    for future in pending:  # a problem in the rows read before comes first
                        future.result()
                    raise
                pending.append(pool.submit(task))
                while len(pending) >= _IN_FLIGHT:
                    write(pending.popleft().result())  # re-raises a failed task, in order
            while pending:
                write(pending.popleft().result())
    finally:
        for future in pending:
            future.cancel()
        wait(pending)  # those running: the next pass needs the cores
    return rows, anomalous


def _batch_tasks(
    scorer: BlockScorer, source: Path, chunk_rows: int
) -> Generator[_Task, None, None]:
    """The general path: batches parsed by :func:`training.data.iter_text`, re-quoted."""
    done = 0
    for batch in iter_text(source, chunk_rows=chunk_rows):
        yield functools.partial(scorer.score, batch, done)
        done += batch.num_rows


def _line_tasks(scorer: BlockScorer, source: Path, chunk_rows: int) -> Generator[_Task, None, None]:
    """The fast path: blocks of whole lines of the file, for :meth:`BlockScorer.score_lines`.

    Raises NotLines at once if the first line is not exactly the header.
    """
    try:
        yield from _line_blocks(scorer, source, chunk_rows)
    except OSError:
        raise NotLines from None  # the general path reports it


def _line_blocks(scorer: BlockScorer, source: Path, chunk_rows: int) -> Iterator[_Task]:
    """:func:`_line_tasks`, without its error handling."""
    # Blocks whose task is done, to be read into again: a buffer used before is already
    # mapped, where a fresh one is faulted in and zeroed page by page.
    spare: list[bytearray] = []

    def score(block: bytearray, size: int) -> ScoredText:
        try:
            return scorer.score_lines(block, size)
        finally:
            spare.append(block)  # from a worker thread: list.append is atomic

    with source.open("rb") as fh:
        sample = fh.read(_SAMPLE_BYTES)
        if sample.startswith(codecs.BOM_UTF8):
            sample = sample[len(codecs.BOM_UTF8) :]
        first, newline, rest = sample.partition(b"\n")
        first = first.removesuffix(b"\r")  # a CR LF line end
        if not newline or b"\r" in first or _csv_record(first) != scorer.header:
            raise NotLines
        per_row = len(rest) / max(rest.count(b"\n"), 1)
        size = min(max(int(per_row * chunk_rows), _SAMPLE_BYTES), _MAX_BLOCK_BYTES)
        carry, blocks = rest, 0
        while True:
            # Read into the block directly: the lines are copied from the file once.
            need = len(carry) + size
            block = spare.pop() if spare else bytearray(0)
            if len(block) < need:
                # Room for a longer carry next time, so that the block can be reused.
                block = bytearray(need + (size >> 6))
            block[: len(carry)] = carry
            end = len(carry) + fh.readinto(memoryview(block)[len(carry) : need])
            if end == len(carry):
                break
            cut = block.rfind(b"\n", 0, end) + 1
            if cut:
                carry = bytes(block[cut:end])
                yield functools.partial(score, block, cut)
                blocks += 1
            elif end < _MAX_BLOCK_BYTES:  # a line longer than the block: read on
                carry = bytes(block[:end])
            else:
                raise NotLines  # the general path says how long
        carry = carry.rstrip(b"\n")  # blank lines are no rows; the last may lack its newline
        if carry:
            yield functools.partial(scorer.score_lines, bytearray(carry + b"\n"))
        elif not blocks:
            raise NotLines  # no data rows: the general path says so


def _csv_record(line: bytes) -> list[str] | None:
    """The fields of one line of CSV, if it is valid UTF-8 and one whole record."""
    try:
        records = list(csv.reader([line.decode("utf-8")]))
    except (UnicodeDecodeError, csv.Error):
        return None
    return records[0] if len(records) == 1 else None
