"""SageMaker K-Means model artifacts, read and written with numpy alone (no MXNet).

A trained ``kmeans:1`` model is a ``model.tar.gz`` holding ``model_algo-1``: an MXNet
NDArray list file (what ``mx.nd.save`` writes) with one float32 ``(k, feature_dim)``
array, row *i* being the centre of cluster *i*. Writing the same format locally means a
local model can be hosted by SageMaker (bring your own model) and a SageMaker model can be
served embedded.

Byte layout (little-endian; MXNet ``NDArray::Save``, dmlc-core vector/string encoding)::

    u64 list magic 0x112 | u64 reserved 0 | u64 array count | arrays... |
    u64 name count | (u64 length + utf-8 bytes) per name

    array (V2 0xF993FAC9 / V3 0xF993FACA): u32 magic | i32 storage type (0 dense) |
        i32 ndim | i64 x ndim shape | i32 dev_type | i32 dev_id | i32 dtype | data
    array (V1 0xF993FAC8): as V2 without the storage type
    array (legacy): u32 ndim (in place of the magic) | u32 x ndim shape | then as V1

A "none" array (ndim 0 in V1/V2/legacy, ndim -1 or an unknown dim in V3) ends after its
shape; V3 ndim 0 is a real scalar.
"""

from __future__ import annotations

import gzip
import io
import math
import struct
import tarfile
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from training.errors import ArtifactError

LIST_MAGIC = 0x112
NDARRAY_V1_MAGIC = 0xF993FAC8
NDARRAY_V2_MAGIC = 0xF993FAC9
NDARRAY_V3_MAGIC = 0xF993FACA
MODEL_MEMBER = "model_algo-1"

# mshadow type flags (3rdparty/mshadow/mshadow/base.h) -> little-endian numpy dtypes.
_DTYPES: dict[int, np.dtype[Any]] = {
    0: np.dtype("<f4"),
    1: np.dtype("<f8"),
    2: np.dtype("<f2"),
    3: np.dtype("u1"),
    4: np.dtype("<i4"),
    5: np.dtype("i1"),
    6: np.dtype("<i8"),
    7: np.dtype("?"),
    8: np.dtype("<i2"),
    9: np.dtype("<u2"),
    10: np.dtype("<u4"),
    11: np.dtype("<u8"),
}
_BFLOAT16 = 12
_CODES: dict[str, int] = {dtype.str.lstrip("<|"): code for code, dtype in _DTYPES.items()}
_STORAGE_NAMES = {1: "row_sparse", 2: "csr"}
# MXNet device types: cpu, gpu, cpu_pinned, cpu_shared. Saved arrays are always read to CPU.
_DEVICE_TYPES = frozenset({1, 2, 3, 5})
_CPU = 1


class _Cursor:
    """Bounds-checked little-endian reads over a byte string."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        """The next ``n`` bytes; ArtifactError if the file ends first."""
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise ArtifactError(
                f"truncated NDArray file: {what} needs {n} bytes at offset {self.pos}, "
                f"but the file has {len(self.data)} bytes"
            )
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def unpack(self, fmt: str, what: str) -> tuple[int, ...]:
        """Unpack a struct format (``<`` implied) at the cursor."""
        full = "<" + fmt
        values: tuple[int, ...] = struct.unpack(full, self.take(struct.calcsize(full), what))
        return values


def ndarrays_to_bytes(arrays: Sequence[npt.NDArray[Any]]) -> bytes:
    """Serialise arrays as an MXNet NDArray list file, byte-identical to ``mx.nd.save``.

    V2 magic, dense storage, context cpu(0), no names. Scalars (0-d arrays) cannot be
    represented in V2 files (ndim 0 means "none") and raise :class:`ArtifactError`.
    """
    given: object = arrays  # typed as a sequence, but an ndarray is one too at runtime
    if isinstance(given, np.ndarray):
        raise TypeError("ndarrays_to_bytes takes a sequence of arrays, not one array")
    parts = [struct.pack("<QQQ", LIST_MAGIC, 0, len(arrays))]
    for i, item in enumerate(arrays):
        arr = np.asarray(item)
        code = _CODES.get(arr.dtype.str.lstrip("<>|="))
        if code is None:
            raise ArtifactError(
                f"array #{i}: dtype {arr.dtype} cannot be stored in an NDArray file"
            )
        if arr.ndim == 0:
            raise ArtifactError(f"array #{i}: 0-d arrays cannot be stored in a V2 NDArray file")
        parts.append(struct.pack(f"<Iii{arr.ndim}q", NDARRAY_V2_MAGIC, 0, arr.ndim, *arr.shape))
        parts.append(struct.pack("<iii", _CPU, 0, code))
        parts.append(np.ascontiguousarray(arr, dtype=_DTYPES[code]).tobytes())
    parts.append(struct.pack("<Q", 0))
    return b"".join(parts)


def ndarrays_from_bytes(data: bytes) -> list[npt.NDArray[Any]] | dict[str, npt.NDArray[Any]]:
    """Parse an MXNet NDArray list file: a list, or a dict when the file stores names.

    Reads V1, V2, V3 and legacy array records with dense storage; bfloat16 is widened to
    float32 (numpy has no bfloat16). Raises :class:`ArtifactError` on anything else.
    """
    cur = _Cursor(bytes(data))
    magic, _reserved = cur.unpack("QQ", "list header")
    if magic != LIST_MAGIC:
        raise ArtifactError(
            f"not an MXNet NDArray file: list magic is {magic:#x}, expected {LIST_MAGIC:#x}"
        )
    (count,) = cur.unpack("Q", "array count")
    # Never preallocate from `count`: a corrupt count must end in a truncation error, not a
    # huge allocation. Every array record takes at least 4 bytes, so this stops in time.
    arrays = [_read_array(cur, i) for i in range(count)]
    (n_names,) = cur.unpack("Q", "name count")
    names: list[str] = []
    for j in range(n_names):
        (length,) = cur.unpack("Q", f"length of name #{j}")
        raw = cur.take(length, f"name #{j}")
        try:
            names.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ArtifactError(f"name #{j} is not valid UTF-8") from exc
    if cur.pos != len(cur.data):
        raise ArtifactError(
            f"{len(cur.data) - cur.pos} unexpected bytes after the end of the NDArray file"
        )
    if not names:
        return arrays
    if len(names) != len(arrays):
        raise ArtifactError(f"NDArray file has {len(arrays)} arrays but {len(names)} names")
    if len(set(names)) != len(names):
        raise ArtifactError("NDArray file repeats an array name")
    return dict(zip(names, arrays, strict=True))


def _read_array(cur: _Cursor, i: int) -> npt.NDArray[Any]:
    """One array record at the cursor."""
    what = f"array #{i}"
    (magic,) = cur.unpack("I", f"{what} magic")
    if magic in (NDARRAY_V2_MAGIC, NDARRAY_V3_MAGIC):
        (stype,) = cur.unpack("i", f"{what} storage type")
        if stype != 0:
            kind = _STORAGE_NAMES.get(stype)
            if kind is None:
                raise ArtifactError(f"{what}: unknown storage type {stype}")
            raise ArtifactError(f"{what}: {kind} (sparse) storage is not supported")
        shape = _read_shape(cur, what)
        if magic == NDARRAY_V3_MAGIC:
            none = shape is None or any(d < 0 for d in shape)
        else:
            none = shape is not None and len(shape) == 0
    elif magic == NDARRAY_V1_MAGIC:
        shape = _read_shape(cur, what)
        none = shape is not None and len(shape) == 0
    else:
        # Legacy record: the word read as magic is ndim, followed by u32 dims.
        shape = cur.unpack(f"{magic}I", f"{what} shape") if magic else ()
        none = len(shape) == 0
    if none or shape is None:
        raise ArtifactError(f"{what} is an empty (none) NDArray with no shape")
    if any(d < 0 for d in shape):
        raise ArtifactError(f"{what} has a negative dimension in shape {tuple(shape)}")
    dev_type, _dev_id, type_flag = cur.unpack("iii", f"{what} context and dtype")
    if dev_type not in _DEVICE_TYPES:
        raise ArtifactError(f"{what}: unknown device type {dev_type}")
    if type_flag == _BFLOAT16:
        raw = _read_data(cur, shape, np.dtype("<u2"), what)
        return (raw.astype(np.uint32) << 16).view(np.float32)
    dtype = _DTYPES.get(type_flag)
    if dtype is None:
        raise ArtifactError(f"{what}: unsupported dtype code {type_flag}")
    return _read_data(cur, shape, dtype, what)


def _read_shape(cur: _Cursor, what: str) -> tuple[int, ...] | None:
    """An i32 ndim and i64 dims; None for ndim -1 (V3 "unknown")."""
    (ndim,) = cur.unpack("i", f"{what} ndim")
    if ndim == -1:
        return None
    if ndim < 0:
        raise ArtifactError(f"{what}: invalid ndim {ndim}")
    return cur.unpack(f"{ndim}q", f"{what} shape")


def _read_data(
    cur: _Cursor, shape: tuple[int, ...], dtype: np.dtype[Any], what: str
) -> npt.NDArray[Any]:
    """Row-major data of ``shape``, copied out of the file bytes."""
    n = math.prod(shape)
    raw = cur.take(n * dtype.itemsize, f"{what} data {shape} {dtype.name}")
    return np.frombuffer(raw, dtype=dtype, count=n).reshape(shape).astype(dtype.newbyteorder("="))


def write_model_tar(centroids: npt.NDArray[Any]) -> bytes:
    """A SageMaker ``model.tar.gz`` holding ``model_algo-1`` with the float32 centroids.

    Deterministic: the same centroids give the same bytes (tar times, owners and modes,
    and the gzip timestamp are fixed).
    """
    arr = _check_centroids(np.asarray(centroids), feature_dim=None)
    payload = ndarrays_to_bytes([arr])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(MODEL_MEMBER)
        info.size = len(payload)
        info.mtime = 0
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(payload))
    return gzip.compress(buf.getvalue(), compresslevel=9, mtime=0)


def read_model_tar(data: bytes, *, feature_dim: int | None = None) -> npt.NDArray[np.float32]:
    """The centroids (float32, ``(k, feature_dim)``) from a SageMaker K-Means ``model.tar.gz``.

    Reads the member named ``model_algo-1`` and ignores any others. Raises
    :class:`ArtifactError` when the data is not gzip, not a tar archive, truncated, lacks
    the member, or holds something other than one finite 2-d float array of the expected
    width.
    """
    if data[:2] != b"\x1f\x8b":
        raise ArtifactError("not a gzip file: a model.tar.gz must be gzip-compressed")
    try:
        raw = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise ArtifactError(f"corrupt or truncated gzip data: {exc}") from exc
    payload = _tar_member(raw, MODEL_MEMBER)
    return read_model_algo(payload, feature_dim=feature_dim)


def _tar_member(raw: bytes, name: str) -> bytes:
    """The bytes of the one regular file called ``name`` in an uncompressed tar archive."""
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            found = [m for m in tar.getmembers() if m.name.removeprefix("./") == name]
            if not found:
                raise ArtifactError(f"the archive has no member named {name}")
            if len(found) > 1:
                raise ArtifactError(f"the archive holds {name} {len(found)} times")
            member = found[0]
            if not member.isfile():
                raise ArtifactError(f"{name} in the archive is not a regular file")
            handle = tar.extractfile(member)
            if handle is None:  # pragma: no cover - isfile() members always have data
                raise ArtifactError(f"{name} in the archive cannot be read")
            return handle.read()
    except ArtifactError:
        raise
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise ArtifactError(f"not a readable tar archive: {exc}") from exc


def read_model_algo(data: bytes, *, feature_dim: int | None = None) -> npt.NDArray[np.float32]:
    """The centroids from the bytes of a ``model_algo-1`` file (see :func:`read_model_tar`)."""
    parsed = ndarrays_from_bytes(data)
    arrays = list(parsed.values()) if isinstance(parsed, dict) else parsed
    if len(arrays) != 1:
        raise ArtifactError(
            f"{MODEL_MEMBER} holds {len(arrays)} arrays; a K-Means model holds exactly one"
        )
    return _check_centroids(arrays[0], feature_dim=feature_dim)


def _check_centroids(arr: npt.NDArray[Any], *, feature_dim: int | None) -> npt.NDArray[np.float32]:
    """Validated float32 copy of a ``(k, d)`` centroid array."""
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ArtifactError(
            f"centroids must be a non-empty (k, feature_dim) array, got {arr.shape}"
        )
    if arr.dtype.kind != "f":
        raise ArtifactError(f"centroids must be floating point, got {arr.dtype}")
    if feature_dim is not None and arr.shape[1] != feature_dim:
        raise ArtifactError(
            f"centroids have {arr.shape[1]} features, expected feature_dim={feature_dim}"
        )
    with np.errstate(over="ignore"):
        out = np.array(arr, dtype=np.float32, order="C")
    if not np.all(np.isfinite(out)):
        raise ArtifactError("centroids contain NaN or infinite values (in float32)")
    return out
