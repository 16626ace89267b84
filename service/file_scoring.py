"""Score a CSV file with a model, streaming: input columns kept, verdict columns added.

Each output row is the input row's text, then ``cluster, distance, threshold, score,
anomalous, top_reason``. The verdicts are computed with the same operations as
:func:`service.scoring.score_columns` on arrays of the same layout, so they are equal to its
values bit for bit (numbers are written as the shortest text that reads back equal), and
nothing is computed that the output does not need: no per-row Python objects.

Two paths, both parsing the file once:

- fast: when every line is one record (no CRLF, no blank line, no value spanning lines, no
  bad value), blocks of lines are parsed for the model's columns only and each line is
  copied to the output as it is;
- general: otherwise, the file is read as text by :func:`training.data.iter_text`, re-quoted
  by pyarrow's CSV writer, and bad values are reported with file, column and row.

The fast path hands over to the general one (from the start) the moment a block does not
qualify. Work overlaps on threads (numpy, pyarrow and file I/O release the GIL): the calling
thread reads and writes in order while a small pool parses, scores and formats blocks.
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
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from service.scoring import ScoringModel
from training.data import first_bad_value, iter_text, parse_numbers, read_header, require_columns
from training.errors import DataError
from training.features import MAX_SCALED, CategoricalField
from training.thresholds import judge

OUTPUT_COLUMNS = ("cluster", "distance", "threshold", "score", "anomalous", "top_reason")

# Threads that parse, score and format blocks (the calling thread reads and writes), and
# blocks in flight: enough to keep every core busy, few enough to bound memory.
_WORKERS = min(max(os.cpu_count() or 2, 2), 8)
_IN_FLIGHT = 2 * _WORKERS
# Rows scored at a time within a batch: their vectors and distances stay in the CPU cache.
_BLOCK_ROWS = 8192
# Bytes read at first: the header line and enough rows to size the blocks. Blocks stay
# below the most (and the output below the 2 GiB) a pyarrow string array holds.
_SAMPLE_BYTES = 1 << 20
_MAX_BLOCK_BYTES = 1 << 28
_QUOTE = ord('"')
_COMMA = ord(",")
_NEWLINE = ord("\n")


@dataclass(frozen=True)
class FileScoringSummary:
    """Counts from one scored file."""

    rows: int
    anomalous: int
    model_version: str
    thresholds_version: int
    output: Path


@dataclass(frozen=True)
class _ScoredText:
    """One batch's output rows as CSV text (less the last newline), and its counts."""

    text: pa.Buffer
    rows: int
    anomalous: int


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
    scorer = _BatchScorer(model, header, os.fspath(source))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    # The pool is the parallelism: BLAS threads of their own would only spin against it.
    blas = threadpool_limits(limits=1, user_api="blas")
    pool = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="score-file")
    try:
        try:
            with contextlib.closing(_line_tasks(scorer, source, chunk_rows)) as tasks:
                rows, anomalous = _write(partial, scorer.header_line, pool, tasks, progress)
        except _NotLines:
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


class _NotLines(Exception):
    """The fast path cannot take this file: a record spans lines, a line is no record, etc."""


class _OutOfRange(Exception):
    """A scaled value beyond ``MAX_SCALED``, which ``FeatureSpec.transform`` refuses."""

    def __init__(self, index: int, field: int) -> None:
        super().__init__(index, field)
        self.index = index  # row in the block
        self.field = field  # position in the feature plan's numeric fields


_Task = Callable[[], "_ScoredText"]


def _write(
    partial: Path, header_line: pa.Buffer, pool: Executor, tasks: Iterator[_Task], progress: bool
) -> tuple[int, int]:
    """Run ``tasks`` on ``pool`` and write their text to ``partial`` in order: (rows, anomalous).

    Reading (the iterator) and writing stay on this thread; a few tasks run meanwhile.
    """
    rows = anomalous = 0
    pending: collections.deque[Future[_ScoredText]] = collections.deque()
    try:
        with (
            partial.open("wb") as out,
            tqdm(desc="score", unit=" rows", disable=not progress, leave=False) as bar,
        ):
            out.write(header_line)

            def write_oldest() -> None:
                nonlocal rows, anomalous
                done = pending.popleft().result()  # re-raises a failed task, in file order
                out.write(done.text)
                out.write(b"\n")  # the last row's: each other row's starts the next row
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
                    write_oldest()
            while pending:
                write_oldest()
    finally:
        for future in pending:
            future.cancel()
        wait(pending)  # those already running: the next pass must not share the cores
    return rows, anomalous


def _batch_tasks(
    scorer: _BatchScorer, source: Path, chunk_rows: int
) -> Generator[_Task, None, None]:
    """The general path: batches parsed by :func:`training.data.iter_text`, re-quoted."""
    done = 0
    for batch in iter_text(source, chunk_rows=chunk_rows):
        yield functools.partial(scorer.score, batch, done)
        done += batch.num_rows


def _line_tasks(
    scorer: _BatchScorer, source: Path, chunk_rows: int
) -> Generator[_Task, None, None]:
    """The fast path: blocks of whole lines of the file, for :meth:`_BatchScorer.score_lines`.

    Raises _NotLines at once if the first line is not exactly the header.
    """
    try:
        yield from _line_blocks(scorer, source, chunk_rows)
    except OSError:
        raise _NotLines from None  # the general path reports it


def _line_blocks(scorer: _BatchScorer, source: Path, chunk_rows: int) -> Iterator[_Task]:
    """:func:`_line_tasks`, without its error handling."""
    with source.open("rb") as fh:
        sample = fh.read(_SAMPLE_BYTES)
        if sample.startswith(codecs.BOM_UTF8):
            sample = sample[len(codecs.BOM_UTF8) :]
        first, newline, rest = sample.partition(b"\n")
        if not newline or b"\r" in first or _csv_record(first) != scorer.header:
            raise _NotLines
        per_row = len(rest) / max(rest.count(b"\n"), 1)
        size = min(max(int(per_row * chunk_rows), _SAMPLE_BYTES), _MAX_BLOCK_BYTES)
        carry, blocks = rest, 0
        while True:
            # Each block is a fresh buffer (a task reads it while the next one is filled),
            # read into directly: the lines are copied from the file once.
            block = bytearray(len(carry) + size)
            block[: len(carry)] = carry
            end = len(carry) + fh.readinto(memoryview(block)[len(carry) :])
            if end == len(carry):
                break
            cut = block.rfind(b"\n", 0, end) + 1
            if cut:
                carry = bytes(block[cut:end])
                del block[cut:]
                yield functools.partial(scorer.score_lines, block)
                blocks += 1
            elif end < _MAX_BLOCK_BYTES:  # a line longer than the block: read on
                carry = bytes(block[:end])
            else:
                raise _NotLines  # the general path says how long
        carry = carry.rstrip(b"\n")  # blank lines are no rows; the last may lack its newline
        if carry:
            yield functools.partial(scorer.score_lines, bytearray(carry + b"\n"))
        elif not blocks:
            raise _NotLines  # no data rows: the general path says so


def _csv_record(line: bytes) -> list[str] | None:
    """The fields of one line of CSV, if it is valid UTF-8 and one whole record."""
    try:
        records = list(csv.reader([line.decode("utf-8")]))
    except (UnicodeDecodeError, csv.Error):
        return None
    return records[0] if len(records) == 1 else None


def _quoted(text: str) -> str:
    """A value as pyarrow's CSV writer writes text: quoted, inner quotes doubled."""
    return '"' + text.replace('"', '""') + '"'


def _number_text(values: npt.NDArray[np.float64]) -> pa.Array:
    """Each number as the shortest text that reads back equal, then a comma; one per value.

    orjson writes an array of floats about three times faster than pyarrow; the values are
    cut from its text without a copy. Numbers that are not finite (JSON has none) go
    through pyarrow.
    """
    numbers = np.ascontiguousarray(values, dtype=np.float64)
    if not np.isfinite(numbers).all():
        text = pc.cast(pa.array(numbers, type=pa.float64()), pa.string())
        return pc.binary_join_element_wise(text, "", ",")
    data = bytearray(orjson.dumps(numbers, option=orjson.OPT_SERIALIZE_NUMPY))  # [a,b,...]
    data[-1] = _COMMA  # the closing bracket: now every number ends with a comma
    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == _COMMA) + 1
    if len(ends) != len(numbers):
        raise RuntimeError(f"orjson wrote {len(ends)} numbers for {len(numbers)}")
    offsets = np.empty(len(numbers) + 1, dtype=np.int32)
    offsets[0] = 1  # after the opening bracket
    offsets[1:] = ends
    return pa.StringArray.from_buffers(len(numbers), pa.py_buffer(offsets), pa.py_buffer(data))


class _BatchScorer:
    """Scores batches of text rows into CSV text; safe to call from several threads.

    Scoring mirrors ``FeatureSpec.transform``, ``NearestCentroids.assign``, ``judge`` and
    ``ScoredBatch.top_reason`` operation for operation, on arrays of the same layout, so
    every number is the one :func:`service.scoring.score_columns` gives
    (tests/service/test_file_scoring.py checks this).
    """

    def __init__(self, model: ScoringModel, header: list[str], where: str) -> None:
        self.model = model
        self.header = header
        self.where = where
        self.schema = model.spec.csv_schema()
        self.features = model.spec._plan
        self.plan = model._plan
        self.categories = [
            pa.array(f.categories, type=pa.string())
            for f in model.spec.fields
            if isinstance(f, CategoricalField)
        ]
        self.category_start = np.array(self.features.category_start, dtype=np.intp)[:, None]
        # Per categorical field, each cluster's usual category as a code (-1: none).
        self.usual_code = [
            usual - start if usual.size else np.full(model.k, -1, dtype=np.intp)
            for usual, start in zip(
                self.plan.usual_column, self.features.category_start, strict=True
            )
        ]
        # Text of values that repeat, with their commas: an output row is the input row,
        # ",cluster,", "distance,", "threshold,", "score," and "anomalous,top_reason".
        self.cluster_text = pa.array([f",{c}," for c in range(model.k)], type=pa.string())
        self.threshold_text = _number_text(np.asarray(model.thresholds.values))
        reasons = [_quoted(name) for name in self.plan.fields] + [_quoted("")]
        self.verdict_text = pa.array(
            [f"{flag},{reason}" for flag in ("false", "true") for reason in reasons],
            type=pa.string(),
        )
        # The fast path reads the model's columns, numbers as numbers (pyarrow's CSV parser,
        # as training.data reads them), and the last column (see score_lines).
        types = {name: pa.float64() for name in self.features.numeric}
        types.update((name, pa.string()) for name in self.features.categorical)
        types.setdefault(header[-1], pa.string())
        self.line_columns = pacsv.ConvertOptions(
            column_types=types,
            include_columns=[name for name in header if name in types],
            strings_can_be_null=False,
            check_utf8=False,  # score_lines checks the whole block
        )
        names = [*header, *OUTPUT_COLUMNS]
        empty = pa.table({name: pa.array([], type=pa.string()) for name in names})
        line = pa.BufferOutputStream()
        pacsv.write_csv(empty, line, pacsv.WriteOptions(quoting_style="needed"))
        self.header_line = line.getvalue()

    def score(self, batch: pa.RecordBatch, done: int) -> _ScoredText:
        """Score ``batch`` of text (data rows ``done + 1`` on) into CSV text rows."""
        numbers, codes = self._columns(batch, done)
        return self._scored(self._input_rows(batch), numbers, codes, done)

    def score_lines(self, block: bytearray) -> _ScoredText:
        """Score a block of whole lines of the file, each line a record, into CSV text rows.

        The lines are the input columns' text in the output, as they are. _NotLines if that
        cannot be relied on (a line that is not exactly one record) or if a value is bad:
        the general path then finds it and names its row.
        """
        if b"\r" in block:  # "\r\n" line ends, or a lone "\r", which pyarrow takes as one
            raise _NotLines
        data = pa.py_buffer(block)
        try:
            pa.Array.from_buffers(
                pa.string(), 1, [None, pa.py_buffer(np.array([0, len(block)], np.int32)), data]
            ).validate(full=True)  # UTF-8 throughout, as the general path checks it
            table = pacsv.read_csv(
                data,
                read_options=pacsv.ReadOptions(
                    column_names=self.header, use_threads=False, block_size=len(block) + 1
                ),
                parse_options=pacsv.ParseOptions(newlines_in_values=True),
                convert_options=self.line_columns,
            )
        except pa.ArrowInvalid:
            raise _NotLines from None
        ends = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == _NEWLINE)
        n = table.num_rows
        # As many records as lines: no blank line, no value spanning lines. But a block cut
        # inside a quoted value also ends in a record, one whose last value ends with that
        # newline: pyarrow reads an unclosed quote to the end. Hence the last column is
        # always read: as text, checked here; as a number, "...\n" fails to convert.
        last = table.column(self.header[-1])
        if n != len(ends) or n == 0 or (pa.types.is_string(last.type) and "\n" in last[-1].as_py()):
            raise _NotLines
        numbers = []
        for name in self.features.numeric:
            values = table.column(name).combine_chunks()
            if values.null_count:
                raise _NotLines
            numbers.append(values.to_numpy())
            if not np.isfinite(numbers[-1]).all():
                raise _NotLines
        codes = self._codes(table, 0, lines=True)
        offsets = np.empty(n + 1, dtype=np.int32)
        offsets[0] = 0
        offsets[1:] = ends  # row i > 0 starts with the newline that ended row i - 1
        rows = pa.StringArray.from_buffers(n, pa.py_buffer(offsets), data)
        return self._scored(rows, numbers, codes, None)

    def _scored(
        self,
        rows: pa.Array,
        numbers: list[npt.NDArray[np.float64]],
        codes: npt.NDArray[np.intp],
        done: int | None,
    ) -> _ScoredText:
        """Score checked columns; each output row is the input row, then the verdicts.

        A value too far out to score is a DataError at data row ``done`` + its index + 1,
        or _NotLines on the fast path (``done`` None).
        """
        n = len(rows)
        cluster = np.empty(n, dtype=np.int64)
        distance = np.empty(n, dtype=np.float64)
        best = np.empty(n, dtype=np.intp)
        # Vectors, distances and reasons a cache-sized block of rows at a time: on the whole
        # batch every step would stream its (rows, columns) arrays through main memory.
        for lo in range(0, n, _BLOCK_ROWS):
            hi = min(lo + _BLOCK_ROWS, n)
            try:
                x = self._vectors([values[lo:hi] for values in numbers], codes[:, lo:hi])
            except _OutOfRange as bad:
                if done is None:
                    raise _NotLines from None
                value = numbers[bad.field][lo + bad.index]
                raise DataError(
                    f"value {value} is out of range (more than {MAX_SCALED:g} spreads from "
                    "the centre: its distance would overflow)",
                    file=self.where,
                    column=self.features.numeric[bad.field],
                    row=done + lo + bad.index + 1,
                ) from None
            cluster[lo:hi], distance[lo:hi] = self.plan.nearest.assign(x)
            best[lo:hi] = self._top_reason(x, codes[:, lo:hi], cluster[lo:hi])
        verdict = judge(self.model.thresholds, cluster, distance)
        clusters = pa.array(cluster)
        # Every piece but the input row carries its commas, so they join with no separator.
        joined = pc.binary_join_element_wise(
            rows,
            self.cluster_text.take(clusters),
            _number_text(distance),
            self.threshold_text.take(clusters),
            _number_text(verdict.score),
            self.verdict_text.take(
                pa.array(verdict.anomalous * (len(self.plan.fields) + 1) + best)
            ),
            "",
        )
        offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32)
        start, stop = int(offsets[joined.offset]), int(offsets[joined.offset + n])
        text = joined.buffers()[2][start:stop]
        return _ScoredText(text, n, int(np.count_nonzero(verdict.anomalous)))

    def _fail(self, batch: pa.RecordBatch, done: int) -> DataError:
        """The located error for a batch whose model columns did not convert."""
        problem = first_bad_value(batch, self.schema)
        if problem is None:
            return DataError(f"rows after data row {done} could not be read", file=self.where)
        index, column, what = problem
        return DataError(what, file=self.where, column=column, row=done + index + 1)

    def _columns(
        self, batch: pa.RecordBatch, done: int
    ) -> tuple[list[npt.NDArray[np.float64]], npt.NDArray[np.intp]]:
        """The numeric fields' values (in the feature plan's order) and the category codes."""
        fp = self.features
        numbers = []
        for name in fp.numeric:
            try:
                values = parse_numbers(batch.column(name)).to_numpy(zero_copy_only=False)
            except pa.ArrowInvalid:
                raise self._fail(batch, done) from None
            if not np.isfinite(values).all():  # NaN is a missing-value marker
                raise self._fail(batch, done)
            numbers.append(values)
        return numbers, self._codes(batch, done, lines=False)

    def _codes(
        self, table: pa.RecordBatch | pa.Table, done: int, *, lines: bool
    ) -> npt.NDArray[np.intp]:
        """Each categorical field's category codes (-1: not seen in training), (fields, rows).

        An empty value is an error: _NotLines on the fast path (``lines``), else DataError.
        """
        fp = self.features
        codes = np.empty((len(fp.categorical), table.num_rows), dtype=np.intp)
        for i, (name, categories) in enumerate(zip(fp.categorical, self.categories, strict=True)):
            text = table.column(name)
            found = pc.index_in(text, value_set=categories)
            if found.null_count and pc.any(pc.equal(pc.binary_length(text), 0)).as_py():
                if lines:
                    raise _NotLines
                raise self._fail(table, done)  # an empty category
            codes[i] = pc.fill_null(found, -1).to_numpy()
        return codes

    def _vectors(
        self, numbers: list[npt.NDArray[np.float64]], codes: npt.NDArray[np.intp]
    ) -> npt.NDArray[np.float64]:
        """``FeatureSpec.transform`` of some rows: the same operations on the same layout."""
        fp = self.features
        n = codes.shape[1]
        x = np.zeros((n, fp.dim), dtype=np.float64)
        if numbers:
            raw = np.empty((n, len(numbers)), dtype=np.float64)
            for j, values in enumerate(numbers):
                raw[:, j] = values
            if fp.n_logged:
                # training.features._signed_log1p: sign(x) * log1p(|x|) on the first columns.
                # sign and abs go over all columns, which is faster than over a strided view
                # and exact (sign(x) * |x| == x); log1p, whose result may depend on the
                # layout, runs on the same view as there.
                sign = np.sign(raw)
                np.abs(raw, out=raw)
                logged = raw[:, : fp.n_logged]
                np.log1p(logged, out=logged)
                raw *= sign
            with np.errstate(over="ignore"):  # refused just below, as transform does
                raw -= fp.center  # (raw - center) / spread, in place
                raw /= fp.spread
            inside = np.abs(raw) <= MAX_SCALED
            if not inside.all():
                index, field = np.argwhere(~inside)[0]
                raise _OutOfRange(int(index), int(field))
            x[:, fp.numeric_at] = raw
        if codes.size:  # one-hot: flat positions, as fancy 2-d indexing is slower
            where = codes + self.category_start
            where += np.arange(0, n * fp.dim, fp.dim)
            x.reshape(-1)[where[codes >= 0]] = 1.0
        return x

    def _top_reason(
        self,
        x: npt.NDArray[np.float64],
        codes: npt.NDArray[np.intp],
        cluster: npt.NDArray[np.int64],
    ) -> npt.NDArray[np.intp]:
        """``ScoredBatch.top_reason`` as field positions (one past the last field: none)."""
        plan = self.plan
        n_fields = len(plan.fields)
        diff = np.take(self.model.centroids, cluster, axis=0)
        np.subtract(x, diff, out=diff)
        parts = np.multiply(diff, diff, out=diff) @ plan.group
        # ScoredBatch.eligible: a positive part; for a categorical field only a category
        # other than the cluster's usual one, and always an unseen category.
        eligible = parts > 0.0
        for i, f in enumerate(plan.categorical_fields):
            if plan.usual_column[i].size:
                eligible[:, f] &= codes[i] != self.usual_code[i][cluster]
            eligible[:, f] |= codes[i] < 0
        ranked = np.where(eligible, parts, -1.0)
        if ranked.shape[1] == 0:
            return np.full(len(x), n_fields, dtype=np.intp)
        top = ranked.argmax(axis=1)
        # The largest part is the one argmax found (NaN included): cheaper than max(axis=1).
        largest = ranked.reshape(-1)[np.arange(0, ranked.size, n_fields) + top]
        best: npt.NDArray[np.intp] = np.where(largest >= 0.0, top, n_fields)
        return best

    @staticmethod
    def _input_rows(batch: pa.RecordBatch) -> pa.Array:
        """The batch's text re-quoted by pyarrow's CSV writer, one string per row.

        Row i > 0 starts with the newline that ended row i - 1, so that rows joined with
        the verdict columns and laid end to end are the output (plus a final newline).
        """
        n = batch.num_rows
        sink = pa.BufferOutputStream()
        pacsv.write_csv(batch, sink, pacsv.WriteOptions(include_header=False))
        written = sink.getvalue()
        # Each row: every value quoted (inner quotes doubled), commas between, a newline.
        lengths = np.full(n, 3 * batch.num_columns, dtype=np.int64)
        for column in batch.columns:
            lengths += _value_lengths(column)
        ends = np.cumsum(lengths)
        if n and ends[-1] != written.size:
            raise RuntimeError("pyarrow's CSV writer wrote rows of unexpected length")
        offsets = np.empty(n + 1, dtype=np.int32)
        offsets[0] = 0
        offsets[1:] = ends - 1
        return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), written)


def _value_lengths(column: Any) -> npt.NDArray[np.int64]:
    """Bytes of each text value as the CSV writer writes it, less the two quotes."""
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int32)[
        column.offset : column.offset + len(column) + 1
    ]
    lengths = np.diff(offsets).astype(np.int64)
    data = column.buffers()[2]
    if data is not None:
        text = np.frombuffer(data, dtype=np.uint8)[offsets[0] : offsets[-1]]
        if (text == _QUOTE).any():
            lengths += pc.count_substring(column, '"').to_numpy(zero_copy_only=False)
    return lengths
