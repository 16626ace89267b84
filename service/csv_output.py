"""CSV text of scored rows: each input row's text, then the verdict columns, in one copy.

An output row is made of six pieces: the input row's text, ``,cluster,``, the distance,
``,threshold,``, the score and ``,anomalous,"top_reason"`` with the newline. The distance
and score are written by orjson (the shortest text that reads back as the same float, and
several times faster than any other writer at hand); the other pieces repeat, so each is
written once per model. Pieces are not copied into strings of their own: an Arrow
binary-view array points at each of them where it lies (input block, orjson's text, the
model's constants), and one cast to a binary array lays them end to end: that array's data
is the output text, assembled in a single copy. The views' layout:
https://arrow.apache.org/docs/format/Columnar.html#variable-size-binary-view-layout
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from service import kernels
from service.column_verdicts import BLOCK_ROWS, BlockVerdicts
from service.scoring import ScoringModel
from service.scratch_arrays import ScratchArrays

_COMMA = ord(",")
# A view: int32 length, then up to 12 bytes inline, or a 4-byte prefix, buffer index, offset.
_INLINE = 12
_SCRATCH = ScratchArrays()
_SCAN_BYTES = 1 << 18  # looked for a byte at a time in byte_positions
_VIEW = np.dtype("V16")
_PIECES = 6  # per output row
_ROWS = BLOCK_ROWS  # rows whose text is assembled at a time
# The array's variadic buffers.
_LINES, _DISTANCE, _SCORE, _CONSTANTS = 0, 1, 2, 3


@dataclass(frozen=True)
class Pieces:
    """Byte ranges of a buffer: one piece of text per row."""

    data: Any  # a buffer: bytes, bytearray, pa.Buffer
    starts: npt.NDArray[np.int64]
    lengths: npt.NDArray[np.int64]

    def slice(self, lo: int, hi: int) -> Pieces:
        """Pieces ``lo`` to ``hi`` (not included)."""
        return Pieces(self.data, self.starts[lo:hi], self.lengths[lo:hi])


class VerdictText:
    """Writes rows of input text followed by a model's verdict columns; thread-safe."""

    def __init__(self, model: ScoringModel) -> None:
        fields = model._plan.fields
        self.n_fields = len(fields)
        thresholds = _number_pieces(np.asarray(model.thresholds.values, dtype=np.float64))
        threshold_text = [
            bytes(thresholds.data[s : s + n]).decode()
            for s, n in zip(thresholds.starts.tolist(), thresholds.lengths.tolist(), strict=True)
        ]
        reasons = [_quoted(name) for name in fields] + [_quoted("")]
        texts = (
            [f",{c}," for c in range(model.k)]
            + [f",{t}," for t in threshold_text]
            + [f",{flag},{reason}\n" for flag in ("false", "true") for reason in reasons]
        )
        encoded = [text.encode() for text in texts]
        lengths = np.array([len(text) for text in encoded], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self._constants = pa.py_buffer(b"".join(encoded))
        self._k = model.k
        # Each cluster's, each threshold's, then each verdict's (anomalous, reason) view.
        views = _views(Pieces(self._constants, starts, lengths), _CONSTANTS)
        self._constant_views = views.view(np.uint8).reshape(-1, 16)

    def rows(self, lines: Pieces, verdicts: BlockVerdicts) -> list[pa.Buffer]:
        """The output text of a block: each line (without its newline), then its verdicts.

        In parts laid end to end, ending with a newline; ``lines`` holds one piece per row of
        ``verdicts``.
        """
        n = len(verdicts.cluster)
        verdict = verdicts.anomalous.view(np.uint8) * np.intp(self.n_fields + 1)
        verdict += verdicts.reason
        line_data = pa.py_buffer(lines.data)
        # A few thousand rows at a time: their views and text stay in the CPU's caches.
        texts = []
        for lo in range(0, n, _ROWS):
            hi = min(lo + _ROWS, n)
            distance = _number_pieces(verdicts.distance[lo:hi])
            score = _number_pieces(verdicts.score[lo:hi])
            part = lines.slice(lo, hi)
            views = _SCRATCH.get("views", (hi - lo) * _PIECES * 16, np.uint8).reshape(-1, 16)
            kernels.row_views(
                *(_bytes(part), part.starts, part.lengths),
                *(_bytes(distance), distance.starts, distance.lengths),
                *(_bytes(score), score.starts, score.lengths),
                self._constant_views,
                verdicts.cluster[lo:hi],
                verdict[lo:hi],
                self._k,
                hi - lo,
                views,
            )
            data = [line_data, pa.py_buffer(distance.data), pa.py_buffer(score.data)]
            data.append(self._constants)  # as _LINES, _DISTANCE, _SCORE, _CONSTANTS number them
            pieces = pa.Array.from_buffers(
                pa.binary_view(), len(views), [None, pa.py_buffer(views), *data]
            )
            joined = pieces.cast(pa.large_binary())
            offsets = np.frombuffer(joined.buffers()[1], dtype=np.int64)
            texts.append(joined.buffers()[2][int(offsets[0]) : int(offsets[-1])])
        return texts


def _quoted(text: str) -> str:
    """A value as pyarrow's CSV writer writes text: quoted, inner quotes doubled."""
    return '"' + text.replace('"', '""') + '"'


def _number_pieces(values: npt.NDArray[np.float64]) -> Pieces:
    """Each number as the shortest text that reads back equal.

    orjson writes an array of floats about three times faster than pyarrow; the numbers are
    found between its commas. Numbers that are not finite (JSON has none) go through
    pyarrow.
    """
    numbers = np.ascontiguousarray(values, dtype=np.float64)
    if not np.isfinite(numbers).all():
        text = pc.cast(pa.array(numbers, type=pa.float64()), pa.string())
        offsets = np.frombuffer(text.buffers()[1], dtype=np.int32)[: len(numbers) + 1]
        starts = offsets[:-1].astype(np.int64)
        return Pieces(text.buffers()[2], starts, np.diff(offsets).astype(np.int64))
    data = orjson.dumps(numbers, option=orjson.OPT_SERIALIZE_NUMPY)  # [a,b,...]
    commas = byte_positions(data, _COMMA)
    if len(commas) != len(numbers) - 1:
        raise RuntimeError(f"orjson wrote {len(commas) + 1} numbers for {len(numbers)}")
    starts = np.empty(len(numbers), dtype=np.int64)
    starts[0] = 1  # after the opening bracket
    starts[1:] = commas + 1
    ends = np.empty(len(numbers), dtype=np.int64)
    ends[:-1] = commas
    ends[-1] = len(data) - 1  # the closing bracket
    return Pieces(data, starts, ends - starts)


def byte_positions(data: Any, byte: int) -> npt.NDArray[np.intp]:
    """Where ``byte`` occurs in ``data`` (a buffer), in order."""
    text = np.frombuffer(data, dtype=np.uint8)
    # A slice at a time: the comparison's scratch stays small (and in the CPU's cache).
    found = _SCRATCH.get("found", min(len(text), _SCAN_BYTES), np.bool_)
    parts = []
    for lo in range(0, max(len(text), 1), _SCAN_BYTES):  # once at least
        part = text[lo : lo + _SCAN_BYTES]
        parts.append(np.flatnonzero(np.equal(part, byte, out=found[: len(part)])) + lo)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _views(pieces: Pieces, index: int) -> npt.NDArray[np.void]:
    """Binary views of ``pieces``, which lie in the array's variadic buffer ``index``.

    For a model's few constant pieces (the rows' views are made by the C kernel
    ``row_views``, :mod:`service.kernels`, the same way): the length, then the bytes
    inline if at most 12 (zero-padded), or else the first 4, the buffer and the offset.
    """
    data = bytes(pieces.data)
    views = []
    for start, length in zip(pieces.starts.tolist(), pieces.lengths.tolist(), strict=True):
        if length <= _INLINE:
            views.append(struct.pack("=i12s", length, data[start : start + length]))
        else:
            views.append(struct.pack("=i4sii", length, data[start : start + 4], index, start))
    return np.frombuffer(b"".join(views), dtype=_VIEW)


def _bytes(pieces: Pieces) -> npt.NDArray[np.uint8]:
    """The buffer that ``pieces`` lie in, as bytes."""
    return np.frombuffer(pieces.data, dtype=np.uint8)
