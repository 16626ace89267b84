"""CSV text of scored rows: each input row's text, then the verdict columns, in one copy.

An output row is made of six pieces: the input row's text, ``,cluster,``, the distance,
``,threshold,``, the score and ``,anomalous,"top_reason"`` with the newline. The distance
and score are written by orjson (the shortest text that reads back as the same float, and
several times faster than any other writer at hand); the other pieces repeat, so each is
written once per model. Pieces are not copied into strings of their own: the C kernel
``join_rows`` (:mod:`service.kernels`) copies each from where it lies (input block,
orjson's text, the model's constants) into the output text, in a single copy.
"""

from __future__ import annotations

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
_SCRATCH = ScratchArrays()
_SCAN_BYTES = 1 << 18  # looked for a byte at a time in byte_positions
_ROWS = BLOCK_ROWS  # rows whose text is assembled at a time


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
        k = model.k
        # Each cluster's, each threshold's, then each verdict's (anomalous, reason) text.
        self._k = k
        self._constants = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self._lengths = np.array([len(text) for text in encoded], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(self._lengths)[:-1]]).astype(np.int64)
        # The most bytes that a row's three constant pieces take.
        lengths = self._lengths
        self._widest = int(lengths[:k].max() + lengths[k : 2 * k].max() + lengths[2 * k :].max())

    def rows(self, lines: Pieces, verdicts: BlockVerdicts) -> list[pa.Buffer]:
        """The output text of a block: each line (without its line end), then its verdicts.

        In parts laid end to end, ending with a newline; ``lines`` holds one piece per row of
        ``verdicts``.
        """
        n = len(verdicts.cluster)
        verdict = verdicts.anomalous.view(np.uint8) * np.int64(self.n_fields + 1)
        verdict += verdicts.reason
        line_bytes = _bytes(lines)
        # A few thousand rows at a time: their pieces and text stay in the CPU's caches.
        texts = []
        for lo in range(0, n, _ROWS):
            hi = min(lo + _ROWS, n)
            distance = _number_pieces(verdicts.distance[lo:hi])
            score = _number_pieces(verdicts.score[lo:hi])
            part = lines.slice(lo, hi)
            pieces = (part.lengths, distance.lengths, score.lengths)
            size = sum(int(lengths.sum()) for lengths in pieces) + (hi - lo) * self._widest
            # From Arrow's memory pool, which keeps freed memory mapped for the next block (a
            # fresh numpy array this large is mapped anew and faulted in page by page).
            buffer = pa.allocate_buffer(size)
            text = np.frombuffer(buffer, dtype=np.uint8)
            written = kernels.join_rows(
                *(line_bytes, part.starts, part.lengths),
                *(_bytes(distance), distance.starts, distance.lengths),
                *(_bytes(score), score.starts, score.lengths),
                *(self._constants, self._starts, self._lengths),
                *(verdicts.cluster[lo:hi], verdict[lo:hi], self._k, hi - lo),
                *(text, size),
            )
            if written < 0:  # the kernel checks the sum against size, and writes nothing
                raise RuntimeError(f"rows {lo} to {hi} do not fit in {size} bytes")
            texts.append(buffer.slice(0, written))
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


def _bytes(pieces: Pieces) -> npt.NDArray[np.uint8]:
    """The buffer that ``pieces`` lie in, as bytes."""
    return np.frombuffer(pieces.data, dtype=np.uint8)
