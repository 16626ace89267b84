"""CSV in, validated numpy columns out, in chunks; and a streaming stratified train/test split.

Files are streamed with ``pyarrow.csv.open_csv`` so memory is bounded by the chunk size, not
by the file. Every problem a user can cause is a :class:`~training.errors.DataError` naming
the file, the column and the first bad data row (1-based; the header is not a data row, and
blank lines are not rows, as for pyarrow).
"""

from __future__ import annotations

import csv
import itertools
import math
import os
import re
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from training.errors import DataError, SpecError

PathLike = str | os.PathLike[str]
_Kind = Literal["numeric", "categorical", "text"]

# pyarrow's default null markers ("", "NA", "NaN", "null", ...). In a numeric column they are
# missing values (an error); categorical columns are read with strings_can_be_null=False, so
# there "NA" is an ordinary category and only "" is rejected (as an empty value).
NULL_MARKERS: tuple[str, ...] = tuple(pacsv.ConvertOptions().null_values)

# pyarrow's CSV number parser skips spaces and tabs around a value; compute.cast does not.
_NUMBER_PADDING = " \t"
# Written with a leading zero ("01", "007"): a code, whose magnitude means nothing.
_CODE_PATTERN = r"^[+-]?0[0-9]"

_SAMPLE_BYTES = 1 << 20
_MIN_BLOCK_BYTES = 1 << 20
_MAX_BLOCK_BYTES = 1 << 28
_FIELD_IN_MESSAGE = re.compile(r"In CSV column #(\d+): ")


@dataclass(frozen=True)
class CsvSchema:
    """The columns a reader needs: numeric ones (float64) and categorical ones (text)."""

    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        """All columns, numeric first."""
        return self.numeric + self.categorical


@dataclass(frozen=True)
class InferredSchema:
    """A feature schema guessed from a file's first rows, and the columns left out (and why)."""

    schema: CsvSchema
    skipped: dict[str, str]


@dataclass(frozen=True)
class Chunk:
    """A run of consecutive validated rows from a CSV file."""

    columns: dict[str, npt.NDArray[Any]]
    first_row: int
    batch: pa.RecordBatch | None = None

    @property
    def n_rows(self) -> int:
        """Number of rows in the chunk."""
        if self.columns:
            return len(next(iter(self.columns.values())))
        return 0 if self.batch is None else int(self.batch.num_rows)


def read_header(path: PathLike) -> list[str]:
    """Column names from the file's first record; DataError if there is no usable header."""
    where = os.fspath(path)
    names: list[str] | None = None
    try:
        # surrogateescape: a bad byte further down the file must not be blamed on the header.
        with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
            for record in csv.reader(fh):
                if record:  # pyarrow skips blank lines before the header as well
                    names = record
                    break
    except FileNotFoundError:
        raise DataError("file not found", file=where) from None
    except IsADirectoryError:
        raise DataError("is a directory, not a CSV file", file=where) from None
    except PermissionError:
        raise DataError("permission denied", file=where) from None
    except csv.Error as exc:
        raise DataError(f"unreadable header ({exc})", file=where) from None
    except OSError as exc:
        raise DataError(f"cannot read file ({exc.strerror or exc})", file=where) from None
    if names is None:
        raise DataError("empty file (no header row)", file=where)
    positions: dict[str, int] = {}
    for position, name in enumerate(names, start=1):
        if not _is_utf8(name):
            raise DataError(f"header is not UTF-8 text (column {position})", file=where)
        if not name.strip():
            raise DataError(f"empty column name (column {position})", file=where)
        if name in positions:
            raise DataError(
                f"duplicate column name (columns {positions[name]} and {position})",
                file=where,
                column=name,
            )
        positions[name] = position
    return names


def infer_schema(
    path: PathLike,
    *,
    label_column: str | None = None,
    max_categories: int = 100,
    sample_rows: int = 100_000,
) -> InferredSchema:
    """Guess numeric and categorical feature columns from the first ``sample_rows`` rows.

    A column is numeric when every sampled value is a finite number, unless some value is
    written with a leading zero ("01"): such codes are categorical. A text column is
    categorical when it has at most ``max_categories`` distinct values and no empty value.
    Everything else (ids, timestamps, numbers with gaps) is listed in ``skipped`` with why.
    """
    if max_categories < 1:
        raise ValueError(f"max_categories must be >= 1, got {max_categories}")
    if sample_rows < 1:
        raise ValueError(f"sample_rows must be >= 1, got {sample_rows}")
    where = os.fspath(path)
    header = read_header(path)
    if label_column is not None and label_column not in header:
        raise DataError("label column is not in the header", file=where, column=label_column)
    text: dict[str, _Kind] = dict.fromkeys(header, "text")
    reader = _Reader(Path(path), header, text, _block_size(path, sample_rows))
    batches: list[pa.RecordBatch] = []
    rows = 0
    for batch in reader.blocks():
        batches.append(batch)
        rows += batch.num_rows
        if rows >= sample_rows:
            break
    if rows == 0:
        raise DataError("no data rows", file=where)
    table = pa.Table.from_batches(batches).slice(0, sample_rows)
    numeric: list[str] = []
    categorical: list[str] = []
    skipped: dict[str, str] = {}
    for name in header:
        if name == label_column:
            continue
        kind, why = _judge_column(table.column(name).combine_chunks(), max_categories)
        if kind == "numeric":
            numeric.append(name)
        elif kind == "categorical":
            categorical.append(name)
        else:
            skipped[name] = why
    return InferredSchema(CsvSchema(tuple(numeric), tuple(categorical)), skipped)


def iter_chunks(
    path: PathLike,
    schema: CsvSchema,
    *,
    chunk_rows: int = 65_536,
    keep_batch: bool = False,
    extra_numeric: Sequence[str] = (),
    extra_categorical: Sequence[str] = (),
) -> Iterator[Chunk]:
    """Stream validated rows in chunks of exactly ``chunk_rows`` rows (the last may be shorter).

    ``columns`` holds the schema's columns and the extra ones: numeric as float64, categorical
    as object arrays of str. With ``keep_batch`` every original column also comes back in
    ``batch`` as the file's text, untouched (written back out, text is exact and about ten
    times cheaper than formatting floats again). The first bad value stops the stream with a
    DataError naming file, column and row; no row is ever dropped.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    where = os.fspath(path)
    numeric = _unique([*schema.numeric, *extra_numeric])
    categorical = _unique([*schema.categorical, *extra_categorical])
    both = [name for name in numeric if name in categorical]
    if both:
        raise SpecError(f"column '{both[0]}' cannot be both numeric and categorical")
    wanted = numeric + categorical
    if not wanted and not keep_batch:
        raise SpecError("nothing to read: the schema has no columns")
    header = read_header(path)
    require_columns(header, wanted, file=where)
    kinds: dict[str, _Kind] = {}
    for name in header:
        if name in numeric:
            kinds[name] = "numeric"
        elif name in categorical:
            kinds[name] = "categorical"
    block = _block_size(path, chunk_rows)
    reader = _Reader(Path(path), header, kinds, block)
    required = [(name, kinds[name]) for name in wanted]
    pending = _Pending()
    rows = 0
    # With keep_batch a second reader returns every column as text; the same block size
    # gives the same batch boundaries, so the two streams are zipped batch by batch.
    text_blocks: Iterator[pa.RecordBatch | None] = (
        _Reader(Path(path), header, dict.fromkeys(header, "text"), block).blocks()
        if keep_batch
        else itertools.repeat(None)
    )
    pairs: Iterator[tuple[pa.RecordBatch, pa.RecordBatch | None]]
    if kinds:
        pairs = zip(reader.blocks(), text_blocks, strict=False)
    else:
        # Nothing to convert: the text stream alone (a typed reader with no columns would
        # read them all, guessing types).
        pairs = ((text, text) for text in text_blocks if text is not None)
    for batch, text in pairs:
        n = batch.num_rows
        if text is not None and text.num_rows != n:
            raise DataError(
                f"rows after data row {rows} could not be read consistently", file=where
            )
        if n == 0:
            continue
        problem = _check_block(batch, required)
        if problem is not None:
            index, column, what = problem
            raise DataError(what, file=where, column=column, row=rows + index + 1)
        columns = {name: _to_numpy(batch.column(name), kind) for name, kind in required}
        offset = 0
        while offset < n:
            take = min(chunk_rows - pending.rows, n - offset)
            pending.add(
                {name: values[offset : offset + take] for name, values in columns.items()},
                text.slice(offset, take) if text is not None else None,
                take,
            )
            offset += take
            if pending.rows == chunk_rows:
                yield pending.emit(first_row=rows + offset - chunk_rows + 1)
        rows += n
    if pending.rows:
        yield pending.emit(first_row=rows - pending.rows + 1)
    if rows == 0:
        raise DataError("no data rows", file=where)


def check_binary_labels(chunk: Chunk, column: str, *, file: str) -> npt.NDArray[np.bool_]:
    """The chunk's label column as booleans; :class:`DataError` at its first value not 0 or 1."""
    values = chunk.columns[column]
    bad = np.flatnonzero((values != 0) & (values != 1))
    if bad.size:
        raise DataError(
            f"label must be 0 or 1, got {float(values[bad[0]])!r}",
            file=file,
            column=column,
            row=chunk.first_row + int(bad[0]),
        )
    return np.asarray(values == 1)


def require_columns(header: Sequence[str], names: Sequence[str], *, file: str) -> None:
    """DataError naming the first of ``names`` that ``header`` lacks (and the others)."""
    missing = [name for name in names if name not in header]
    if missing:
        also = f" (so are {', '.join(repr(m) for m in missing[1:])})" if len(missing) > 1 else ""
        raise DataError(
            f"required column is missing from the header{also}", file=file, column=missing[0]
        )


def iter_text(path: PathLike, *, chunk_rows: int = 65_536) -> Iterator[pa.RecordBatch]:
    """Stream every column as the file's text, in batches of about ``chunk_rows`` rows.

    One parse of the file, nothing converted: check and convert columns with
    :func:`parse_numbers` and :func:`first_bad_value`. A row that cannot be parsed (wrong
    number of fields, text that is not UTF-8) stops the stream with a located DataError, as
    does a file without data rows. Batches are never empty.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    header = read_header(path)
    reader = _Reader(
        Path(path), header, dict.fromkeys(header, "text"), _block_size(path, chunk_rows)
    )
    rows = 0
    for batch in reader.blocks():
        if batch.num_rows:
            rows += batch.num_rows
            yield batch
    if rows == 0:
        raise DataError("no data rows", file=os.fspath(path))


def parse_numbers(text: pa.Array) -> pa.Array:
    """Text to float64 as pyarrow's CSV reader parses it (spaces and tabs around ignored).

    Raises ``pyarrow.ArrowInvalid`` if a value is not a number; missing-value markers such
    as "NaN" may come back as NaN, so check the result with :func:`first_bad_value` unless
    every value is finite.
    """
    try:
        return pc.cast(text, pa.float64())
    except pa.ArrowInvalid:
        return pc.cast(pc.utf8_trim(text, characters=_NUMBER_PADDING), pa.float64())


def first_bad_value(batch: pa.RecordBatch, schema: CsvSchema) -> tuple[int, str, str] | None:
    """The first bad value of ``schema``'s columns in a batch of text from :func:`iter_text`.

    ``(row index in the batch, column, problem)`` as :func:`iter_chunks` reports it: a
    missing, non-numeric or non-finite number, or an empty category; on the same row the
    leftmost column wins. None if every value is good.
    """
    kinds: dict[str, _Kind] = dict.fromkeys(schema.numeric, "numeric")
    kinds.update((name, "categorical") for name in schema.categorical)
    columns = [(name, kinds[name]) for name in batch.schema.names if name in kinds]
    return _first_problem(batch, columns, _raw_problem)


class StratifiedSplitter:
    """Streaming train/test split that keeps each stratum's test share at ``test_fraction``.

    Call :meth:`assign` chunk after chunk. After every call, each stratum's test rows are
    within one row of ``test_fraction`` times the rows of that stratum seen so far; inside a
    chunk the test rows are drawn at random. The same seed and chunk sequence give the same
    split, so a second pass over a file reproduces the first.
    """

    def __init__(self, test_fraction: float = 0.2, seed: int = 0) -> None:
        if not (math.isfinite(test_fraction) and 0.0 <= test_fraction <= 1.0):
            raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
        self.test_fraction = float(test_fraction)
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        # Per stratum: rows seen, test rows, and a random offset in [0, 1) so that the test
        # count floor(f * seen + offset) is unbiased even for strata of one or two rows.
        self._seen: dict[Hashable, int] = {}
        self._test: dict[Hashable, int] = {}
        self._offset: dict[Hashable, float] = {}

    def assign(self, strata: npt.NDArray[Any] | None, n: int) -> npt.NDArray[np.bool_]:
        """Split the next ``n`` rows: True marks a test row."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if strata is None:
            keys: list[Hashable] = [_ALL_ROWS]
            inverse = np.zeros(n, dtype=np.int64)
        else:
            values = np.asarray(strata)
            if values.shape != (n,):
                raise ValueError(f"strata has shape {values.shape}, expected ({n},)")
            keys, inverse = _factorize(values)
        counts = np.bincount(inverse, minlength=len(keys))
        quota = np.empty(len(keys), dtype=np.int64)
        for j, key in enumerate(keys):
            if key not in self._seen:
                self._seen[key] = 0
                self._test[key] = 0
                self._offset[key] = float(self._rng.random())
            seen = self._seen[key] + int(counts[j])
            target = math.floor(self.test_fraction * seen + self._offset[key])
            quota[j] = min(max(target - self._test[key], 0), int(counts[j]))
            self._seen[key] = seen
            self._test[key] += int(quota[j])
        # Rank rows at random within their stratum; the first `quota` of each go to test.
        order = np.lexsort((self._rng.random(n), inverse))
        starts = np.cumsum(counts) - counts
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n, dtype=np.int64) - np.repeat(starts, counts)
        result: npt.NDArray[np.bool_] = rank < quota[inverse]
        return result


def _factorize(values: npt.NDArray[Any]) -> tuple[list[Hashable], npt.NDArray[np.int64]]:
    """Distinct values and, per row, the index of its value."""
    if values.dtype == object:
        # A dict beats np.unique here: sorting Python strings costs far more than hashing them.
        index: dict[Hashable, int] = {}
        try:
            inverse = np.fromiter(
                (index.setdefault(v, len(index)) for v in values.tolist()),
                dtype=np.int64,
                count=len(values),
            )
        except TypeError as exc:
            raise ValueError(f"strata values must be hashable: {exc}") from None
        return list(index), inverse
    uniques, positions = np.unique(values, return_inverse=True)
    keys: list[Hashable] = [_NAN_STRATUM if k != k else k for k in uniques.tolist()]  # NaN != NaN
    return keys, positions.reshape(-1).astype(np.int64)


class _Stratum:
    """Marker key for a whole-file stratum or NaN values."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_ALL_ROWS = _Stratum("<all rows>")
_NAN_STRATUM = _Stratum("<nan>")


class _Pending:
    """Row pieces waiting to fill a chunk of exactly ``chunk_rows`` rows."""

    def __init__(self) -> None:
        self.pieces: list[dict[str, npt.NDArray[Any]]] = []
        self.batches: list[pa.RecordBatch] = []
        self.rows = 0

    def add(
        self, columns: dict[str, npt.NDArray[Any]], batch: pa.RecordBatch | None, rows: int
    ) -> None:
        """Append a piece of ``rows`` rows."""
        self.pieces.append(columns)
        if batch is not None:
            self.batches.append(batch)
        self.rows += rows

    def emit(self, *, first_row: int) -> Chunk:
        """Join the pieces into one chunk and start over."""
        if len(self.pieces) == 1:
            columns = self.pieces[0]
        else:
            columns = {
                name: np.concatenate([piece[name] for piece in self.pieces])
                for name in self.pieces[0]
            }
        batch: pa.RecordBatch | None = None
        if len(self.batches) == 1:
            batch = self.batches[0]
        elif self.batches:
            batch = pa.Table.from_batches(self.batches).combine_chunks().to_batches()[0]
        chunk = Chunk(columns=columns, first_row=first_row, batch=batch)
        self.pieces, self.batches, self.rows = [], [], 0
        return chunk


class _Reader:
    """pyarrow's streaming CSV reader, with its errors turned into located DataErrors."""

    def __init__(self, path: Path, header: list[str], kinds: dict[str, _Kind], block: int):
        self.path = path
        self.where = os.fspath(path)
        self.header = header
        self.kinds = kinds
        self.block = block

    def _open(self, types: dict[str, pa.DataType]) -> pacsv.CSVStreamingReader:
        return pacsv.open_csv(
            self.path,
            read_options=pacsv.ReadOptions(block_size=self.block),
            # Quoted values may hold newlines; without this a block could split such a row.
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types=types,
                include_columns=[name for name in self.header if name in types],
                strings_can_be_null=False,
            ),
        )

    def blocks(self) -> Iterator[pa.RecordBatch]:
        """Record batches of about ``block`` bytes of the file, in order."""
        types = {
            name: pa.float64() if kind == "numeric" else pa.string()
            for name, kind in self.kinds.items()
        }
        done = 0
        try:
            for batch in self._open(types):
                yield batch
                done += batch.num_rows
        except pa.ArrowInvalid as exc:
            raise self._explain(str(exc), done) from None
        except OSError as exc:
            raise DataError(f"cannot read file ({exc})", file=self.where) from None

    def _explain(self, message: str, done: int) -> DataError:
        """A located DataError for pyarrow's error, which names neither row nor column."""
        if "straddling object" in message:
            return DataError(
                f"a row after data row {done} is longer than {self.block} bytes "
                "(an unclosed quote, or not a CSV file?)",
                file=self.where,
            )
        if message.startswith("CSV parse error"):
            found = self._find_field_count_error()
            if found is not None:
                row, fields = found
                return DataError(
                    f"expected {len(self.header)} fields, found {fields}",
                    file=self.where,
                    row=row,
                )
            return DataError(message, file=self.where)
        field = _FIELD_IN_MESSAGE.match(message)
        located = self._find_bad_value(done)
        if located is not None:
            return located
        if field is not None and int(field.group(1)) < len(self.header):
            column = self.header[int(field.group(1))]
            return DataError(message[field.end() :], file=self.where, column=column)
        return DataError(message, file=self.where)

    def _find_field_count_error(self) -> tuple[int, int] | None:
        """Row and field count of the first record whose field count differs from the header's."""
        width = len(self.header)
        try:
            with open(self.path, encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
                records = (record for record in csv.reader(fh) if record)
                next(records, None)  # the header
                for row, record in enumerate(records, start=1):
                    if len(record) != width:
                        return row, len(record)
        except (OSError, csv.Error):
            return None
        return None

    def _find_bad_value(self, done: int) -> DataError | None:
        """Rescan from row ``done`` as raw bytes to find the value pyarrow could not convert."""
        try:
            rows = 0
            for batch in self._open({name: pa.binary() for name in self.kinds}):
                n = batch.num_rows
                if rows + n <= done:
                    rows += n
                    continue
                offset = max(done - rows, 0)
                found = _first_problem(
                    batch.slice(offset),
                    [(name, kind) for name, kind in self.kinds.items()],
                    _raw_problem,
                )
                if found is not None:
                    index, column, what = found
                    return DataError(
                        what, file=self.where, column=column, row=rows + offset + index + 1
                    )
                rows += n
        except (pa.ArrowInvalid, OSError):
            return None
        return None


def _block_size(path: PathLike, rows: int) -> int:
    """Bytes per read block so that a block holds about ``rows`` rows of this file."""
    try:
        with open(path, "rb") as fh:
            sample = fh.read(_SAMPLE_BYTES)
    except OSError as exc:
        raise DataError(f"cannot read file ({exc})", file=os.fspath(path)) from None
    per_row = len(sample) / max(sample.count(b"\n"), 1)
    longest = max((len(line) for line in sample.split(b"\n")), default=0)
    # Room for rows much longer than the sampled ones: pyarrow fails on a row over a block.
    wanted = max(per_row * rows, 16 * longest, _MIN_BLOCK_BYTES)
    return int(min(wanted, _MAX_BLOCK_BYTES))


def _check_block(
    batch: pa.RecordBatch, required: list[tuple[str, _Kind]]
) -> tuple[int, str, str] | None:
    """The first bad value in a converted block: (row index, column, problem)."""
    return _first_problem(batch, required, _converted_problem)


def _first_problem(
    batch: pa.RecordBatch,
    columns: list[tuple[str, _Kind]],
    problem_in: Callable[[pa.Array, _Kind], tuple[int, str] | None],
) -> tuple[int, str, str] | None:
    """The earliest problem over the columns; on the same row the leftmost column wins."""
    best: tuple[int, str, str] | None = None
    for name, kind in columns:
        found = problem_in(batch.column(name), kind)
        if found is not None and (best is None or found[0] < best[0]):
            best = (found[0], name, found[1])
    return best


def _converted_problem(values: pa.Array, kind: _Kind) -> tuple[int, str] | None:
    """First missing / non-finite number, or empty category, in a column pyarrow converted."""
    if kind == "numeric":
        # The common case, a clean block, stays in Arrow's kernels: no copy to numpy.
        if values.null_count == 0 and pc.all(pc.is_finite(values)).as_py():
            return None
        numbers = values.to_numpy(zero_copy_only=False)  # nulls come back as NaN
        bad = ~np.isfinite(numbers)
        if not bad.any():
            return None
        index = int(np.argmax(bad))
        if values.null_count and not values[index].is_valid:
            return index, "missing value"
        return index, f"not a finite number ({numbers[index]})"
    if kind == "categorical":
        empty = _first_true(pc.equal(pc.binary_length(values), 0))
        return None if empty is None else (empty, "empty value")
    return None


def _raw_problem(raw: pa.Array, kind: _Kind) -> tuple[int, str] | None:
    """First problem of any kind in a column read as raw bytes (the slow, located path)."""
    found: list[tuple[int, str]] = []
    bad_utf8 = _first_failure(raw, pa.string())
    if bad_utf8 is not None:
        found.append((bad_utf8, "not valid UTF-8 text"))
    text = pc.cast(raw.slice(0, len(raw) if bad_utf8 is None else bad_utf8), pa.string())
    if kind == "categorical":
        empty = _first_true(pc.equal(pc.binary_length(text), 0))
        if empty is not None:
            found.append((empty, "empty value"))
    elif kind == "numeric":
        missing = pc.is_in(text, value_set=pa.array(NULL_MARKERS, pa.string()))
        first_missing = _first_true(missing)
        if first_missing is not None:
            found.append((first_missing, "missing value"))
        candidates = pc.if_else(missing, "0", pc.utf8_trim(text, characters=_NUMBER_PADDING))
        not_number = _first_failure(candidates, pa.float64())
        if not_number is not None:
            found.append((not_number, f"not a number: {_shorten(text[not_number].as_py())!r}"))
        end = len(candidates) if not_number is None else not_number
        numbers = pc.cast(candidates.slice(0, end), pa.float64()).to_numpy(zero_copy_only=False)
        infinite = np.flatnonzero(~np.isfinite(numbers))
        if infinite.size:
            index = int(infinite[0])
            found.append((index, f"not a finite number ({numbers[index]})"))
    return min(found) if found else None


def _first_failure(values: pa.Array, target: pa.DataType) -> int | None:
    """Index of the first value that does not cast to ``target``, by bisection."""
    if _casts(values, target):
        return None
    lo, hi = 0, len(values)  # the first failure lies in [lo, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _casts(values.slice(lo, mid - lo), target):
            lo = mid
        else:
            hi = mid
    return lo


def _casts(values: pa.Array, target: pa.DataType) -> bool:
    """Whether every value casts to ``target`` (pyarrow's parser, as the CSV reader uses)."""
    try:
        pc.cast(values, target)
    except pa.ArrowInvalid:
        return False
    return True


def _first_true(mask: pa.Array) -> int | None:
    """Index of the first true value of a boolean array, if any."""
    flags = mask.to_numpy(zero_copy_only=False)
    if not flags.any():
        return None
    return int(np.argmax(flags))


def _to_numpy(values: pa.Array, kind: _Kind) -> npt.NDArray[Any]:
    """A validated column as numpy: a writable float64 copy, or an object array of str."""
    if kind == "numeric":
        numbers: npt.NDArray[np.float64] = values.to_numpy(zero_copy_only=False, writable=True)
        return numbers
    text: npt.NDArray[np.object_] = values.to_numpy(zero_copy_only=False)
    return text


def _judge_column(values: pa.Array, max_categories: int) -> tuple[str, str]:
    """("numeric" | "categorical" | "skipped", why skipped) for a sampled text column."""
    n = len(values)
    missing = pc.is_in(values, value_set=pa.array(NULL_MARKERS, pa.string()))
    present = pc.filter(values, pc.invert(missing))
    code_like = False
    trimmed = pc.utf8_trim(values, characters=_NUMBER_PADDING)
    if len(present) and _casts(pc.filter(trimmed, pc.invert(missing)), pa.float64()):
        numbers = pc.cast(pc.if_else(missing, "0", trimmed), pa.float64())
        gaps = _first_true(pc.or_(missing, pc.invert(pc.is_finite(numbers))))
        if gaps is not None:
            return "skipped", f"numeric, but with missing or non-finite values (row {gaps + 1})"
        code_like = bool(pc.any(pc.match_substring_regex(present, _CODE_PATTERN)).as_py())
        if not code_like:
            return "numeric", ""
    if len(present) == 0:
        return "skipped", f"no values in the first {n} rows"
    empty = _first_true(pc.equal(pc.binary_length(values), 0))
    if empty is not None:
        return "skipped", f"text with empty values (row {empty + 1})"
    distinct = len(pc.unique(values))
    if distinct > max_categories:
        what = "codes" if code_like else "text values"
        return "skipped", (
            f"{distinct} distinct {what} in the first {n} rows, more than max_categories="
            f"{max_categories} (an id or a timestamp?)"
        )
    return "categorical", ""


def _unique(names: Sequence[str]) -> list[str]:
    """Names in first-seen order without repeats."""
    return list(dict.fromkeys(names))


def _is_utf8(text: str) -> bool:
    """Whether a surrogateescape-decoded string came from valid UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shorten(text: object, limit: int = 40) -> str:
    """A value for an error message, cut to ``limit`` characters."""
    value = str(text)
    return value if len(value) <= limit else value[: limit - 3] + "..."
