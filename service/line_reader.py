"""Reads a model's values from lines of CSV in one compiled pass, when the lines are simple.

A block of lines is *simple* when its lines all end with a line feed, or all with a carriage
return and a line feed (and no other carriage return occurs), every line has exactly the
header's number of values, each value is either unquoted (no quote, comma or line end in it)
or quoted with no quote or line end inside (commas are fine), the model's numeric values are
plain decimals, ``-?[0-9]+(.[0-9]+)?``, quoted or not, whose digits (less the fraction's
trailing zeros) make an integer up to 2**53 with at most 22 after the point, and no category
is empty. That is what CSV writers write for numbers and codes. Such a block is read in one
pass by the C kernel ``read_lines`` (:mod:`service.kernels`); anything else (an exponent, an
escaped quote, a blank line, ``NA``) is left to pyarrow's CSV parser, which the caller uses
for that block instead (or, for a block with a carriage return, score-file's general path):
both read the same values from every block that either reads.

The values are those pyarrow reads: a decimal's value is its correctly rounded float64
(pyarrow's parser rounds correctly too, and Clinger's fast path is exact within those
bounds), and a category is matched by its bytes, as ``pyarrow.compute.index_in`` matches it.
tests/service/test_line_reader.py checks both against pyarrow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service import kernels


@dataclass(frozen=True)
class LineValues:
    """A block's values: where each line starts and ends, numbers and category codes."""

    starts: npt.NDArray[np.int64]  # where each line starts, as a byte position in the block
    ends: npt.NDArray[np.int64]  # where its line end (LF or CR LF) starts
    numbers: npt.NDArray[np.float64]  # (fields, rows), in the order of ``numeric``
    codes: npt.NDArray[np.int64]  # (fields, rows), as ``categorical``; -1: not a known one


class LineReader:
    """Reads the named columns of blocks of lines of a file with ``header``; thread-safe."""

    def __init__(
        self,
        header: Sequence[str],
        numeric: Sequence[str],
        categorical: Sequence[str],
        categories: Sequence[Sequence[str]],
    ) -> None:
        """``categories[i]``: the known categories of ``categorical[i]``, code = position."""
        columns = {name: j for j, name in enumerate(header)}
        self._columns = len(header)
        self._roles = np.full(len(header), kernels.SKIP, dtype=np.int64)
        self._slots = np.zeros(len(header), dtype=np.int64)
        for role, names in ((kernels.NUMERIC, numeric), (kernels.CATEGORICAL, categorical)):
            for slot, name in enumerate(names):
                self._roles[columns[name]] = role
                self._slots[columns[name]] = slot
        self._n_numeric = len(numeric)
        encoded = [[text.encode() for text in field] for field in categories]
        widest = max((len(field) for field in encoded), default=0)
        # Every field's categories in one array of bytes, each field's offsets in a row.
        # (A byte more, so that the array is never empty.)
        everything = b"".join(b"".join(field) for field in encoded) + b"\0"
        self._texts = np.frombuffer(everything, dtype=np.uint8)
        self._offsets = np.zeros((len(encoded), widest + 1), dtype=np.int64)
        size = 2  # table slots: a power of two, at least twice the categories
        while size < 2 * widest:
            size *= 2
        self._tables = np.empty((len(encoded), size), dtype=np.int64)
        start = 0
        for i, field in enumerate(encoded):
            offsets = start + np.cumsum([0, *map(len, field)], dtype=np.int64)
            self._offsets[i, : len(offsets)] = offsets
            kernels.category_table(self._texts, offsets, len(field), self._tables[i], size)
            start = int(offsets[-1])

    def read(self, block: bytearray | bytes, size: int) -> LineValues | None:
        """The values of ``block[:size]``, whole lines (LF or CR LF); None if not simple."""
        if not 0 <= size <= len(block):  # the kernel reads up to ``size``: never past the end
            raise ValueError(f"size {size} is outside the block of {len(block)} bytes")
        data = np.frombuffer(block, dtype=np.uint8)
        rows = kernels.count_lines(data, size)
        starts = np.empty(rows, dtype=np.int64)
        ends = np.empty(rows, dtype=np.int64)
        numbers = np.empty((self._n_numeric, rows), dtype=np.float64)
        codes = np.empty((len(self._tables), rows), dtype=np.int64)
        read = kernels.read_lines(
            data,
            size,
            rows,
            self._columns,
            self._roles,
            self._slots,
            self._tables,
            self._tables.shape[1],
            self._texts,
            self._offsets,
            self._offsets.shape[1],
            numbers,
            codes,
            starts,
            ends,
        )
        if read == kernels.NOT_SIMPLE:
            return None
        return LineValues(starts, ends, numbers, codes)
