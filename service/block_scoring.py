"""Score one block of a CSV file into output text: parse, check, score, format.

Two kinds of block, as :mod:`service.file_scoring` reads them:

- whole lines of the file, each line one record (:meth:`BlockScorer.score_lines`): parsed
  for the model's columns only, by :class:`service.line_reader.LineReader` where the lines
  are simple (plain decimals, no escaped quotes, ...) and by pyarrow's CSV parser where
  not; each line kept as it is in the output;
- a batch of text columns from :func:`training.data.iter_text` (:meth:`BlockScorer.score`):
  its rows re-quoted by pyarrow's CSV writer, and a bad value reported with its row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from service.column_verdicts import BlockVerdicts, ColumnScorer, OutOfRange
from service.csv_output import Pieces, VerdictText, byte_positions
from service.line_reader import LineReader, LineValues
from service.scoring import ScoringModel
from training.data import first_bad_value, parse_numbers
from training.errors import DataError
from training.features import MAX_SCALED, CategoricalField

OUTPUT_COLUMNS = ("cluster", "distance", "threshold", "score", "anomalous", "top_reason")
_QUOTE = ord('"')
_NEWLINE = ord("\n")


class NotLines(Exception):
    """A block the line path cannot take: a record spans lines, a line is no record, etc."""


@dataclass(frozen=True)
class ScoredText:
    """One block's output rows as CSV text (each ending with a newline), and its counts."""

    texts: list[pa.Buffer]  # to be written one after the other
    rows: int
    anomalous: int


class BlockScorer:
    """Scores blocks of a file with a given header into CSV text; safe to call from threads.

    Every number is the one :func:`service.scoring.score_columns` gives (see
    :class:`service.column_verdicts.ColumnScorer`; tests/service/test_file_scoring.py
    checks this).
    """

    def __init__(self, model: ScoringModel, header: list[str], where: str) -> None:
        self.model = model
        self.header = header
        self.where = where
        self.schema = model.spec.csv_schema()
        self.features = model.spec._plan
        self.columns = ColumnScorer(model)
        self.text = VerdictText(model)
        known = [f.categories for f in model.spec.fields if isinstance(f, CategoricalField)]
        self.categories = [pa.array(names, type=pa.string()) for names in known]
        # Simple lines are read in one compiled pass; pyarrow's parser reads the others.
        self.lines = LineReader(header, self.features.numeric, self.features.categorical, known)
        # The line path reads the model's columns, numbers as numbers (pyarrow's CSV parser,
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

    def score_lines(self, block: bytearray, size: int | None = None) -> ScoredText:
        """Score whole lines of the file, each a record: the first ``size`` bytes of ``block``.

        The lines, less their line ends, are the input columns' text in the output, as they
        are. NotLines if that cannot be relied on (a line that is not exactly one record) or
        if a value is bad: the general path then finds it and names its row.
        """
        size = len(block) if size is None else size
        data = pa.py_buffer(memoryview(block)[:size])
        try:
            pa.Array.from_buffers(
                pa.string(), 1, [None, pa.py_buffer(np.array([0, data.size], np.int32)), data]
            ).validate(full=True)  # UTF-8 throughout, as the general path checks it
        except pa.ArrowInvalid:
            raise NotLines from None
        values = self.lines.read(block, size)
        if values is None:
            # CR LF line ends, or a lone CR (a line end too): the C reader's alone to read.
            if block.find(b"\r", 0, size) >= 0:
                raise NotLines
            values = self._parse_lines(data)
        n = len(values.ends)
        if n == 0:
            raise NotLines
        try:
            verdicts = self.columns.score(values.numbers, values.codes, n)
        except OutOfRange:
            raise NotLines from None
        lines = Pieces(data, values.starts, values.ends - values.starts)
        return self._scored(lines, verdicts)

    def _parse_lines(self, data: pa.Buffer) -> LineValues:
        """:meth:`score_lines`' values by pyarrow's CSV parser, for lines that are not simple.

        NotLines if a line is not exactly one record or a value is bad.
        """
        try:
            table = pacsv.read_csv(
                data,
                read_options=pacsv.ReadOptions(
                    column_names=self.header, use_threads=False, block_size=data.size + 1
                ),
                parse_options=pacsv.ParseOptions(newlines_in_values=True),
                convert_options=self.line_columns,
            )
        except pa.ArrowInvalid:
            raise NotLines from None
        ends = byte_positions(data, _NEWLINE)
        n = table.num_rows
        # As many records as lines: no blank line, no value spanning lines. But a block cut
        # inside a quoted value also ends in a record, one whose last value ends with that
        # newline: pyarrow reads an unclosed quote to the end. Hence the last column is
        # always read: as text, checked here; as a number, "...\n" fails to convert.
        last = table.column(self.header[-1])
        if n != len(ends) or n == 0 or (pa.types.is_string(last.type) and "\n" in last[-1].as_py()):
            raise NotLines
        numbers = np.empty((len(self.features.numeric), n), dtype=np.float64)
        for j, name in enumerate(self.features.numeric):
            values = table.column(name).combine_chunks()
            if values.null_count:
                raise NotLines
            numbers[j] = values.to_numpy()
            if not np.isfinite(numbers[j]).all():
                raise NotLines
        starts = np.empty(n, dtype=np.int64)
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
        return LineValues(starts, ends, numbers, self._codes(table, 0, lines=True))

    def score(self, batch: pa.RecordBatch, done: int) -> ScoredText:
        """Score ``batch`` of text (data rows ``done + 1`` on) into CSV text rows."""
        fp = self.features
        numbers = np.empty((len(fp.numeric), batch.num_rows), dtype=np.float64)
        for j, name in enumerate(fp.numeric):
            try:
                numbers[j] = parse_numbers(batch.column(name)).to_numpy(zero_copy_only=False)
            except pa.ArrowInvalid:
                raise self._fail(batch, done) from None
            if not np.isfinite(numbers[j]).all():  # NaN is a missing-value marker
                raise self._fail(batch, done)
        codes = self._codes(batch, done, lines=False)
        try:
            verdicts = self.columns.score(numbers, codes, batch.num_rows)
        except OutOfRange as bad:
            raise DataError(
                f"value {numbers[bad.field][bad.index]} is out of range (more than "
                f"{MAX_SCALED:g} spreads from the centre: its distance would overflow)",
                file=self.where,
                column=fp.numeric[bad.field],
                row=done + bad.index + 1,
            ) from None
        return self._scored(_input_rows(batch), verdicts)

    def _scored(self, lines: Pieces, verdicts: BlockVerdicts) -> ScoredText:
        """The output text and counts of rows whose input text is ``lines``."""
        return ScoredText(
            self.text.rows(lines, verdicts),
            len(verdicts.cluster),
            int(np.count_nonzero(verdicts.anomalous)),
        )

    def _fail(self, batch: pa.RecordBatch, done: int) -> DataError:
        """The located error for a batch whose model columns did not convert."""
        problem = first_bad_value(batch, self.schema)
        if problem is None:
            return DataError(f"rows after data row {done} could not be read", file=self.where)
        index, column, what = problem
        return DataError(what, file=self.where, column=column, row=done + index + 1)

    def _codes(
        self, table: pa.RecordBatch | pa.Table, done: int, *, lines: bool
    ) -> npt.NDArray[np.int64]:
        """Each categorical field's category codes (-1: not seen in training), (fields, rows).

        An empty value is an error: NotLines on the line path (``lines``), else DataError.
        """
        fp = self.features
        codes = np.empty((len(fp.categorical), table.num_rows), dtype=np.int64)
        for i, (name, categories) in enumerate(zip(fp.categorical, self.categories, strict=True)):
            text = table.column(name)
            found = pc.index_in(text, value_set=categories)
            if found.null_count and pc.any(pc.equal(pc.binary_length(text), 0)).as_py():
                if lines:
                    raise NotLines
                raise self._fail(table, done)  # an empty category
            codes[i] = pc.fill_null(found, -1).to_numpy()
        return codes


def _input_rows(batch: pa.RecordBatch) -> Pieces:
    """The batch's text re-quoted by pyarrow's CSV writer: one piece per row, no newline."""
    n = batch.num_rows
    sink = pa.BufferOutputStream()
    pacsv.write_csv(batch, sink, pacsv.WriteOptions(include_header=False))
    written = sink.getvalue()
    # Each row: every value quoted (inner quotes doubled), commas between, a newline.
    lengths = np.full(n, 3 * batch.num_columns - 1, dtype=np.int64)
    for column in batch.columns:
        lengths += _value_lengths(column)
    ends = np.cumsum(lengths + 1)
    if n and ends[-1] != written.size:
        raise RuntimeError("pyarrow's CSV writer wrote rows of unexpected length")
    return Pieces(written, ends - lengths - 1, lengths)


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
