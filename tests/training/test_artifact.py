"""MXNet NDArray list files and SageMaker model.tar.gz, byte for byte."""

from __future__ import annotations

import contextlib
import gzip
import io
import struct
import tarfile
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from training.artifact import (
    MODEL_MEMBER,
    ndarrays_from_bytes,
    ndarrays_to_bytes,
    read_model_algo,
    read_model_tar,
    write_model_tar,
)
from training.errors import ArtifactError

V1, V2, V3 = 0xF993FAC8, 0xF993FAC9, 0xF993FACA


def known_centroids() -> npt.NDArray[np.float32]:
    """An 8 x 7 float32 model with distinct, non-trivial values."""
    return (np.arange(56, dtype=np.float32).reshape(8, 7) - 20.5) / 3


def list_file(records: list[bytes], names: list[str] | None = None) -> bytes:
    """Hand-built NDArray list file around pre-encoded array records."""
    out = struct.pack("<QQQ", 0x112, 0, len(records)) + b"".join(records)
    names = names or []
    out += struct.pack("<Q", len(names))
    for name in names:
        raw = name.encode()
        out += struct.pack("<Q", len(raw)) + raw
    return out


def record(
    arr: npt.NDArray[Any],
    *,
    magic: int = V2,
    stype: int = 0,
    dtype_code: int = 0,
    dev_type: int = 1,
) -> bytes:
    """One array record as MXNet writes it (V1/V2/V3 or legacy when magic is None-like)."""
    head = struct.pack("<I", magic)
    if magic in (V2, V3):
        head += struct.pack("<i", stype)
    head += struct.pack(f"<i{arr.ndim}q", arr.ndim, *arr.shape)
    return head + struct.pack("<iii", dev_type, 0, dtype_code) + arr.tobytes()


def legacy_record(arr: npt.NDArray[Any], dtype_code: int) -> bytes:
    """Pre-V1 record: u32 ndim instead of a magic, u32 dims."""
    head = struct.pack(f"<I{arr.ndim}I", arr.ndim, *arr.shape)
    return head + struct.pack("<iii", 1, 0, dtype_code) + arr.tobytes()


def tar_gz(members: dict[str, bytes], *, directories: tuple[str, ...] = ()) -> bytes:
    """A model.tar.gz with arbitrary members, as another tool might build it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in directories:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue())


# -- the exact layout -----------------------------------------------------------------------


def test_known_model_has_the_exact_mxnet_byte_layout() -> None:
    centroids = known_centroids()
    data = ndarrays_to_bytes([centroids])
    assert len(data) == 296
    header = bytes.fromhex(
        "12010000 00000000 00000000 00000000 01000000 00000000 c9fa93f9 00000000"
        " 02000000 08000000 00000000 07000000 00000000 01000000 00000000 00000000".replace(" ", "")
    )
    assert data[:64] == header
    assert data[64:288] == centroids.astype("<f4").tobytes()
    assert data[288:] == b"\x00" * 8


def test_round_trip_keeps_values_dtypes_and_shapes() -> None:
    arrays = [
        known_centroids(),
        np.linspace(-1, 1, 12).reshape(3, 4),
        np.array([1.5, -2.25], dtype=np.float16),
        np.arange(6, dtype=np.int32).reshape(1, 2, 3),
        np.array([-(2**40), 2**40], dtype=np.int64),
        np.array([0, 255], dtype=np.uint8),
        np.array([-128, 127], dtype=np.int8),
        np.array([True, False]),
        np.array([-3, 3], dtype=np.int16),
        np.array([65535], dtype=np.uint16),
        np.array([2**32 - 1], dtype=np.uint32),
        np.array([2**64 - 1], dtype=np.uint64),
        np.zeros((0, 3), dtype=np.float32),
    ]
    back = ndarrays_from_bytes(ndarrays_to_bytes(arrays))
    assert isinstance(back, list)
    assert len(back) == len(arrays)
    for original, loaded in zip(arrays, back, strict=True):
        assert loaded.dtype == original.dtype
        assert loaded.shape == original.shape
        np.testing.assert_array_equal(loaded, original)


def test_writer_stores_big_endian_input_little_endian() -> None:
    arr = np.arange(4, dtype=">f4").reshape(2, 2)
    data = ndarrays_to_bytes([arr])
    assert data == ndarrays_to_bytes([arr.astype("<f4")])
    np.testing.assert_array_equal(ndarrays_from_bytes(data)[0], arr)


@pytest.mark.parametrize(
    ("arr", "match"),
    [
        (np.float32(1.0).reshape(()), "0-d"),
        (np.array(["a"], dtype=object), "dtype object"),
        (np.array([1 + 2j]), "dtype complex128"),
    ],
)
def test_writer_rejects_what_the_format_cannot_hold(arr: npt.NDArray[Any], match: str) -> None:
    with pytest.raises(ArtifactError, match=match):
        ndarrays_to_bytes([arr])


# -- other versions, written by other MXNet builds ------------------------------------------


def test_reads_v1_records() -> None:
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    [loaded] = ndarrays_from_bytes(list_file([record(arr, magic=V1)]))
    np.testing.assert_array_equal(loaded, arr)


def test_reads_v3_records_including_a_scalar() -> None:
    matrix = np.arange(6, dtype=np.float64).reshape(3, 2)
    scalar = np.array(7, dtype=np.int32)
    loaded = ndarrays_from_bytes(
        list_file([record(matrix, magic=V3, dtype_code=1), record(scalar, magic=V3, dtype_code=4)])
    )
    assert isinstance(loaded, list)
    np.testing.assert_array_equal(loaded[0], matrix)
    assert loaded[1].shape == ()
    assert loaded[1].dtype == np.int32
    assert int(loaded[1]) == 7


def test_reads_legacy_records() -> None:
    arr = np.arange(12, dtype=np.int64).reshape(3, 4)
    [loaded] = ndarrays_from_bytes(list_file([legacy_record(arr, dtype_code=6)]))
    assert loaded.dtype == np.int64
    np.testing.assert_array_equal(loaded, arr)


def test_reads_a_named_dict_file_like_pca() -> None:
    mean = np.arange(3, dtype=np.float32).reshape(1, 3)
    v = np.eye(3, dtype=np.float32)
    s = np.array([3.0, 2.0, 1.0], dtype=np.float32)
    loaded = ndarrays_from_bytes(
        list_file([record(mean), record(v), record(s)], ["mean", "v", "s"])
    )
    assert isinstance(loaded, dict)
    assert list(loaded) == ["mean", "v", "s"]
    np.testing.assert_array_equal(loaded["v"], v)
    np.testing.assert_array_equal(loaded["s"], s)


def test_reads_float64_and_a_gpu_context() -> None:
    arr = np.array([[0.1, -1e300]], dtype=np.float64)
    [loaded] = ndarrays_from_bytes(list_file([record(arr, dtype_code=1, dev_type=2)]))
    assert loaded.dtype == np.float64
    np.testing.assert_array_equal(loaded, arr)


def test_bfloat16_is_widened_to_float32() -> None:
    values = np.array([1.0, -2.5, 0.15625], dtype=np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype("<u2")  # exact in bfloat16
    [loaded] = ndarrays_from_bytes(list_file([record(bf16, dtype_code=12)]))
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, values)


# -- bad NDArray files ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"PK\x03\x04" + b"\x00" * 40, "list magic"),
        (list_file([record(np.zeros(2, np.float32), stype=1)]), "row_sparse"),
        (list_file([record(np.zeros(2, np.float32), stype=2)]), "csr"),
        (list_file([record(np.zeros(2, np.float32), stype=9)]), "unknown storage type 9"),
        (list_file([record(np.zeros(2, np.float32), dtype_code=13)]), "unsupported dtype code 13"),
        (list_file([record(np.zeros(2, np.float32), dtype_code=-1)]), "unsupported dtype code -1"),
        (list_file([record(np.zeros(2, np.float32), dev_type=7)]), "device type 7"),
        (list_file([record(np.zeros(2, np.float32))]) + b"\x00", "1 unexpected bytes"),
        (list_file([record(np.zeros(2, np.float32))], ["a", "b"]), "1 arrays but 2 names"),
        (
            list_file(
                [record(np.zeros(2, np.float32)), record(np.ones(2, np.float32))], ["a", "a"]
            ),
            "repeats",
        ),
        (
            list_file([record(np.zeros(2, np.float32))])[:-8]
            + struct.pack("<QQ", 1, 2)
            + b"\xff\xfe",
            "UTF-8",
        ),
        # "none" arrays: V2 with ndim 0, V3 with ndim -1, legacy with ndim 0
        (list_file([struct.pack("<Iii", V2, 0, 0)]), "none"),
        (list_file([struct.pack("<Iii", V3, 0, -1)]), "none"),
        (list_file([struct.pack("<I", 0)]), "none"),
        (list_file([struct.pack("<Iii", V2, 0, -3)]), "invalid ndim -3"),
        (list_file([struct.pack("<Iiiq", V2, 0, 1, -4)]), "negative dimension"),
    ],
)
def test_bad_ndarray_files_raise_artifact_error(data: bytes, match: str) -> None:
    with pytest.raises(ArtifactError, match=match):
        ndarrays_from_bytes(data)


def test_every_truncation_of_an_ndarray_file_is_an_artifact_error() -> None:
    small = list_file(
        [record(np.arange(6, dtype=np.float32).reshape(2, 3)), record(np.ones(2, np.float32))],
        ["centroids", "w"],
    )
    ndarrays_from_bytes(small)  # the whole file is fine
    for end in range(len(small)):
        with pytest.raises(ArtifactError):
            ndarrays_from_bytes(small[:end])


def test_huge_declared_sizes_fail_cleanly_without_allocating() -> None:
    huge_count = struct.pack("<QQQ", 0x112, 0, 2**63)
    with pytest.raises(ArtifactError, match="truncated"):
        ndarrays_from_bytes(huge_count)
    huge_shape = list_file([struct.pack("<Iiiqq", V2, 0, 2, 2**40, 2**40)])
    with pytest.raises(ArtifactError, match="truncated"):
        ndarrays_from_bytes(huge_shape)
    huge_legacy_ndim = list_file([struct.pack("<I", 0x7FFFFFFF)])
    with pytest.raises(ArtifactError, match="truncated"):
        ndarrays_from_bytes(huge_legacy_ndim)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_parse_or_raise_artifact_error(data: bytes) -> None:
    header = struct.pack("<QQ", 0x112, 0)
    for candidate in (data, header + data):
        with contextlib.suppress(ArtifactError):
            ndarrays_from_bytes(candidate)


@settings(max_examples=50, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.float32, np.float64, np.int32, np.uint8, np.int64]),
        shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5),
    )
)
def test_any_array_round_trips(arr: npt.NDArray[Any]) -> None:
    [loaded] = ndarrays_from_bytes(ndarrays_to_bytes([arr]))
    assert loaded.dtype == arr.dtype
    np.testing.assert_array_equal(loaded, arr)


# -- model.tar.gz ---------------------------------------------------------------------------


def test_model_tar_round_trip_and_member() -> None:
    centroids = known_centroids()
    data = write_model_tar(centroids)
    loaded = read_model_tar(data, feature_dim=7)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, centroids)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        [member] = tar.getmembers()
        assert member.name == MODEL_MEMBER
        assert (member.mtime, member.uid, member.gid, member.mode) == (0, 0, 0, 0o644)
        handle = tar.extractfile(member)
        assert handle is not None
        assert handle.read() == ndarrays_to_bytes([centroids])


def test_model_tar_bytes_are_deterministic() -> None:
    first = write_model_tar(known_centroids())
    assert write_model_tar(known_centroids().copy()) == first
    assert write_model_tar(known_centroids().astype(np.float64)) == first
    assert first[4:8] == b"\x00\x00\x00\x00"  # gzip MTIME field
    changed = known_centroids()
    changed[3, 3] += 1
    assert write_model_tar(changed) != first


def test_reads_sagemaker_style_archives_with_other_members() -> None:
    centroids = known_centroids()
    payload = ndarrays_to_bytes([centroids])
    for members in (
        {"state.serialize.time": b"0.01", MODEL_MEMBER: payload},
        {f"./{MODEL_MEMBER}": payload, "./notes.txt": b"x"},
    ):
        np.testing.assert_array_equal(read_model_tar(tar_gz(members)), centroids)


def test_float64_centroids_in_the_file_are_read_as_float32() -> None:
    centroids = np.linspace(0, 1, 14).reshape(2, 7)
    data = tar_gz({MODEL_MEMBER: ndarrays_to_bytes([centroids])})
    loaded = read_model_tar(data, feature_dim=7)
    assert loaded.dtype == np.float32
    np.testing.assert_allclose(loaded, centroids, rtol=1e-7)


def test_a_single_named_array_is_accepted() -> None:
    centroids = known_centroids()
    data = list_file([record(centroids)], ["centroids"])
    np.testing.assert_array_equal(read_model_algo(data), centroids)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "not a gzip"),
        (b"PK\x03\x04 zip file", "not a gzip"),
        (ndarrays_to_bytes([known_centroids()]), "not a gzip"),
        (gzip.compress(b"definitely not a tar archive" * 30), "not a readable tar"),
        (gzip.compress(b""), "not a readable tar"),
        (b"\x1f\x8b" + b"\x00" * 20, "corrupt or truncated gzip"),
        (tar_gz({"model_algo-2": b"x"}), "no member named model_algo-1"),
        (tar_gz({}, directories=(MODEL_MEMBER,)), "not a regular file"),
        (tar_gz({MODEL_MEMBER: b"garbage"}), "truncated NDArray file"),
        (
            tar_gz({MODEL_MEMBER: ndarrays_to_bytes([known_centroids(), known_centroids()])}),
            "holds 2 arrays",
        ),
        (tar_gz({MODEL_MEMBER: ndarrays_to_bytes([])}), "holds 0 arrays"),
        (
            tar_gz({MODEL_MEMBER: ndarrays_to_bytes([np.zeros(7, np.float32)])}),
            r"\(k, feature_dim\)",
        ),
        (tar_gz({MODEL_MEMBER: ndarrays_to_bytes([np.zeros((0, 7), np.float32)])}), "non-empty"),
        (tar_gz({MODEL_MEMBER: ndarrays_to_bytes([np.zeros((2, 7), np.int32)])}), "floating"),
        (
            tar_gz({MODEL_MEMBER: ndarrays_to_bytes([np.full((2, 7), np.nan, np.float32)])}),
            "NaN or infinite",
        ),
        (
            tar_gz({MODEL_MEMBER: ndarrays_to_bytes([np.full((2, 7), 1e300)])}),
            "NaN or infinite",
        ),
    ],
)
def test_bad_model_archives_raise_artifact_error(data: bytes, match: str) -> None:
    with pytest.raises(ArtifactError, match=match):
        read_model_tar(data)


def test_duplicate_member_is_rejected() -> None:
    payload = ndarrays_to_bytes([known_centroids()])
    data = tar_gz({MODEL_MEMBER: payload, f"./{MODEL_MEMBER}": payload})
    with pytest.raises(ArtifactError, match="2 times"):
        read_model_tar(data)


def test_feature_dim_mismatch_is_rejected() -> None:
    with pytest.raises(ArtifactError, match="7 features, expected feature_dim=6"):
        read_model_tar(write_model_tar(known_centroids()), feature_dim=6)


def test_every_truncation_of_a_model_tar_is_an_artifact_error() -> None:
    data = write_model_tar(np.ones((2, 3), dtype=np.float32))
    for end in range(len(data)):
        with pytest.raises(ArtifactError):
            read_model_tar(data[:end])


def test_every_flipped_byte_of_an_artifact_reads_or_raises_artifact_error() -> None:
    centroids = np.ones((2, 3), dtype=np.float32)
    for data, read in (
        (write_model_tar(centroids), read_model_tar),
        (ndarrays_to_bytes([centroids]), read_model_algo),
    ):
        failures = 0
        for i in range(len(data)):
            corrupt = bytearray(data)
            corrupt[i] ^= 0xFF
            try:
                read(bytes(corrupt))
            except ArtifactError:
                failures += 1
        assert failures > len(data) // 2


def test_truncated_member_inside_a_valid_gzip_is_an_artifact_error() -> None:
    raw = gzip.decompress(write_model_tar(known_centroids()))
    for end in (100, 511, 512, 600, 700, 512 + 295):
        with pytest.raises(ArtifactError):
            read_model_tar(gzip.compress(raw[:end]))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_archive_bytes_read_or_raise_artifact_error(data: bytes) -> None:
    for candidate in (data, b"\x1f\x8b" + data, gzip.compress(data)):
        with contextlib.suppress(ArtifactError):
            read_model_tar(candidate)


@pytest.mark.parametrize(
    ("centroids", "match"),
    [
        (np.zeros(7, np.float32), r"\(k, feature_dim\)"),
        (np.zeros((0, 7), np.float32), "non-empty"),
        (np.array([[1.0, np.inf]]), "NaN or infinite"),
        (np.array([[1.0, 1e39]]), "NaN or infinite"),  # finite in float64, inf in float32
        (np.zeros((2, 2), np.int64), "floating"),
    ],
)
def test_write_model_tar_rejects_bad_centroids(centroids: npt.NDArray[Any], match: str) -> None:
    with pytest.raises(ArtifactError, match=match):
        write_model_tar(centroids)
