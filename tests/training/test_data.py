"""CSV reading, validation with located errors, schema inference and the stratified split."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training import data
from training.data import (
    CsvSchema,
    StratifiedSplitter,
    infer_schema,
    iter_chunks,
    read_header,
)
from training.errors import DataError, SpecError

SCHEMA = CsvSchema(numeric=("amount", "hour"), categorical=("code",))
HEADER = "amount,hour,code,note\n"


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def good_rows(n: int, start: int = 0) -> str:
    return "".join(f"{i}.5,{i % 24},c{i % 3},n{i}\n" for i in range(start, start + n))


def read_all(path: Path, schema: CsvSchema = SCHEMA, **kwargs: object) -> list[data.Chunk]:
    return list(iter_chunks(path, schema, **kwargs))  # type: ignore[arg-type]


def located(path: Path, schema: CsvSchema = SCHEMA, **kwargs: object) -> tuple[DataError, str]:
    with pytest.raises(DataError) as caught:
        read_all(path, schema, **kwargs)
    return caught.value, str(caught.value)


def assert_located(error: DataError, path: Path, column: str | None, row: int | None) -> None:
    """The error names file, column and row, both as attributes and in its one-line message."""
    message = str(error)
    assert error.file == str(path)
    assert error.column == column
    assert error.row == row
    assert message.startswith(str(path))
    if column is not None:
        assert f"column '{column}'" in message
    if row is not None:
        assert f"row {row}:" in message
    assert "\n" not in message


# --- read_header ---------------------------------------------------------------------------


def test_read_header_returns_names(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", '\ufeffamount,"tran, code",hour\n1,2,3\n')
    assert read_header(path) == ["amount", "tran, code", "hour"]


def test_read_header_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    with pytest.raises(DataError, match="file not found") as caught:
        read_header(path)
    assert_located(caught.value, path, None, None)


def test_read_header_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="directory"):
        read_header(tmp_path)


@pytest.mark.parametrize("text", ["", "\n\n"])
def test_read_header_empty_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "empty.csv", text)
    with pytest.raises(DataError, match="empty file") as caught:
        read_header(path)
    assert_located(caught.value, path, None, None)


def test_read_header_duplicate_names_both_positions(tmp_path: Path) -> None:
    path = write(tmp_path / "dup.csv", "a,b,c,b\n1,2,3,4\n")
    with pytest.raises(DataError, match=r"columns 2 and 4") as caught:
        read_header(path)
    assert_located(caught.value, path, "b", None)


def test_read_header_empty_name(tmp_path: Path) -> None:
    path = write(tmp_path / "blank.csv", "a, ,c\n1,2,3\n")
    with pytest.raises(DataError, match=r"empty column name \(column 2\)"):
        read_header(path)


def test_read_header_not_blamed_for_bad_bytes_below_it(tmp_path: Path) -> None:
    path = write(tmp_path / "late.csv", b"a,b\n1,\xff\n")
    assert read_header(path) == ["a", "b"]


def test_read_header_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path / "bin.csv", b"a,\xff\xfe\n1,2\n")
    with pytest.raises(DataError, match="not UTF-8"):
        read_header(path)


# --- iter_chunks: the happy path -----------------------------------------------------------


def test_chunks_have_exact_size_and_row_numbers(tmp_path: Path) -> None:
    path = write(tmp_path / "ok.csv", HEADER + good_rows(1_000))
    chunks = read_all(path, chunk_rows=300)
    assert [(c.first_row, c.n_rows) for c in chunks] == [
        (1, 300),
        (301, 300),
        (601, 300),
        (901, 100),
    ]
    amount = np.concatenate([c.columns["amount"] for c in chunks])
    np.testing.assert_array_equal(amount, np.arange(1_000) + 0.5)
    first = chunks[0]
    assert set(first.columns) == {"amount", "hour", "code"}
    assert first.columns["amount"].dtype == np.float64
    assert first.columns["amount"].flags.writeable
    assert first.columns["code"].dtype == object
    assert first.columns["code"][:4].tolist() == ["c0", "c1", "c2", "c0"]
    assert first.batch is None


def test_chunks_span_read_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tiny read blocks: chunks are stitched from pieces of several blocks.
    monkeypatch.setattr(data, "_MIN_BLOCK_BYTES", 1)
    path = write(tmp_path / "ok.csv", HEADER + good_rows(500))
    chunks = read_all(path, chunk_rows=37, keep_batch=True)
    assert [c.n_rows for c in chunks] == [37] * 13 + [500 - 13 * 37]
    assert [c.first_row for c in chunks] == list(range(1, 500, 37))
    for chunk in chunks:
        assert chunk.batch is not None
        assert chunk.batch.num_rows == chunk.n_rows
        start = chunk.first_row - 1
        np.testing.assert_array_equal(
            chunk.columns["amount"], np.arange(start, start + 37)[: chunk.n_rows] + 0.5
        )
        assert chunk.batch.column("note").to_pylist()[0] == f"n{start}"


def test_keep_batch_holds_every_column_in_file_order(tmp_path: Path) -> None:
    path = write(tmp_path / "ok.csv", HEADER + good_rows(5))
    (chunk,) = read_all(path, keep_batch=True)
    assert chunk.batch is not None
    assert chunk.batch.schema.names == ["amount", "hour", "code", "note"]
    assert chunk.batch.schema.field("note").type == pa.string()
    # The batch is the file's text, untouched, so it can be written back out exactly.
    assert chunk.batch.schema.field("amount").type == pa.string()
    assert chunk.batch.column("note").to_pylist() == [f"n{i}" for i in range(5)]
    assert chunk.batch.column("amount").to_pylist() == [f"{i}.5" for i in range(5)]
    np.testing.assert_array_equal(chunk.columns["amount"], [0.5, 1.5, 2.5, 3.5, 4.5])


def test_keep_batch_text_lines_up_with_columns_across_chunks(tmp_path: Path) -> None:
    rows = "".join(
        f"{i}.50,{i % 24},c{i % 3},note {i}\n" for i in range(1, 80_001)
    )  # > 1 MiB: several read blocks
    path = write(tmp_path / "ok.csv", HEADER + rows)
    chunks = read_all(path, chunk_rows=30_000, keep_batch=True)
    assert sum(c.n_rows for c in chunks) == 80_000
    for chunk in chunks:
        assert chunk.batch is not None
        text = chunk.batch.column("amount").to_pylist()
        assert [float(t) for t in text] == chunk.columns["amount"].tolist()
        assert text[0] == f"{chunk.first_row}.50"


def test_keep_batch_alone_streams_whole_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "ok.csv", HEADER + good_rows(10))
    chunks = read_all(path, CsvSchema(), chunk_rows=4, keep_batch=True)
    assert [(c.first_row, c.n_rows, c.columns) for c in chunks] == [
        (1, 4, {}),
        (5, 4, {}),
        (9, 2, {}),
    ]


def test_keep_batch_alone_never_guesses_types(tmp_path: Path) -> None:
    # A column that looks numeric for the first read blocks and holds text later.
    rows = "".join(f"{i}.5,{i % 24},c{i % 3},{i}\n" for i in range(80_000)) + "1.5,1,c0,abc\n"
    path = write(tmp_path / "ok.csv", HEADER + rows)
    chunks = read_all(path, CsvSchema(), chunk_rows=50_000, keep_batch=True)
    assert [c.n_rows for c in chunks] == [50_000, 30_001]
    last = chunks[-1].batch
    assert last is not None
    assert last.column("note").to_pylist()[-2:] == ["79999", "abc"]


def test_extra_columns_are_read_and_checked(tmp_path: Path) -> None:
    path = write(tmp_path / "ok.csv", "amount,hour,code,label,shop\n1,2,a,0,s1\n3,4,b,1,s2\n")
    (chunk,) = read_all(path, extra_numeric=("label",), extra_categorical=("shop",))
    np.testing.assert_array_equal(chunk.columns["label"], [0.0, 1.0])
    assert chunk.columns["shop"].tolist() == ["s1", "s2"]


def test_never_drops_rows(tmp_path: Path) -> None:
    # Quoted newlines, null-looking categories and blank lines: every data row comes back.
    text = HEADER + '1,2,NA,"two\nlines"\n\n3,4,null,x\n5,6,"",y\n'.replace('""', '"q"')
    path = write(tmp_path / "odd.csv", text)
    (chunk,) = read_all(path)
    assert chunk.n_rows == 3
    assert chunk.columns["code"].tolist() == ["NA", "null", "q"]


def test_padded_numbers_are_accepted(tmp_path: Path) -> None:
    path = write(tmp_path / "pad.csv", "amount,hour,code\n 1.5 ,\t2,a\n")
    (chunk,) = read_all(path)
    np.testing.assert_array_equal(chunk.columns["amount"], [1.5])


# --- iter_chunks: every error names file, column and first bad row ------------------------


def test_missing_required_column(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", "amount,code\n1,a\n")
    error, message = located(path)
    assert_located(error, path, "hour", None)
    assert "missing from the header" in message


def test_several_missing_columns_are_all_named(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", "note\nx\n")
    _, message = located(path)
    assert "'hour'" in message
    assert "'code'" in message


def test_missing_extra_column(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", HEADER + good_rows(3))
    error, _ = located(path, extra_numeric=("is_fraud",))
    assert_located(error, path, "is_fraud", None)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("abc", "not a number: 'abc'"),
        ("1,5", None),  # one field too many: see the field-count test
        ("0x10", "not a number: '0x10'"),
        ("", "missing value"),
        ("NA", "missing value"),
        ("NaN", "missing value"),
        ("nan", "missing value"),
        ("null", "missing value"),
        ("inf", "not a finite number (inf)"),
        ("-Infinity", "not a finite number (-inf)"),
        ("1e400", "not a finite number (inf)"),
    ],
)
def test_bad_numeric_value(tmp_path: Path, value: str, problem: str | None) -> None:
    rows = good_rows(40).splitlines(keepends=True)
    rows[16] = f"{value},3,c1,x\n"
    path = write(tmp_path / "bad.csv", HEADER + "".join(rows))
    error, message = located(path, chunk_rows=10)
    if problem is None:
        assert_located(error, path, None, 17)
    else:
        assert_located(error, path, "amount", 17)
        assert message.endswith(problem)


def test_empty_categorical_value(tmp_path: Path) -> None:
    rows = good_rows(30).splitlines(keepends=True)
    rows[29] = "1,2,,x\n"
    path = write(tmp_path / "bad.csv", HEADER + "".join(rows))
    error, message = located(path)
    assert_located(error, path, "code", 30)
    assert message.endswith("empty value")


def test_text_in_numeric_extra_column(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.csv", "amount,hour,code,label\n1,2,a,0\n1,2,a,yes\n")
    error, message = located(path, extra_numeric=("label",))
    assert_located(error, path, "label", 2)
    assert "'yes'" in message


def test_first_bad_row_wins_across_columns(tmp_path: Path) -> None:
    rows = good_rows(50).splitlines(keepends=True)
    rows[30] = "oops,3,c1,x\n"  # text: pyarrow reports the column, not the row
    rows[20] = "1,,c1,x\n"  # missing value, earlier, in another column
    rows[10] = "1,2,,x\n"  # empty category, earlier still
    path = write(tmp_path / "bad.csv", HEADER + "".join(rows))
    error, _ = located(path)
    assert_located(error, path, "code", 11)


def test_same_row_leftmost_column_wins(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.csv", HEADER + good_rows(3) + "x,y,,z\n")
    error, _ = located(path)
    assert_located(error, path, "amount", 4)


def test_text_after_quoted_newline_counts_records(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.csv", HEADER + '1,2,a,"multi\nline"\n' + "3,4,b,c\n5,zz,c,d\n")
    error, message = located(path)
    assert_located(error, path, "hour", 3)
    assert "'zz'" in message


@pytest.mark.parametrize(("row", "fields"), [("1,2,a", 3), ("1,2,a,b,c", 5)])
def test_wrong_field_count(tmp_path: Path, row: str, fields: int) -> None:
    path = write(tmp_path / "bad.csv", HEADER + good_rows(7) + row + "\n" + good_rows(2))
    error, message = located(path)
    assert_located(error, path, None, 8)
    assert message.endswith(f"expected 4 fields, found {fields}")


def test_invalid_utf8_in_category(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.csv", HEADER.encode() + b"1,2,a,x\n1,2,\xff,x\n")
    error, message = located(path)
    assert_located(error, path, "code", 2)
    assert "UTF-8" in message


def test_invalid_utf8_in_kept_text_column(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.csv", HEADER.encode() + b"1,2,a,x\n1,2,a,\xfe\n")
    assert len(read_all(path)) == 1  # the column is not read without keep_batch
    error, _ = located(path, keep_batch=True)
    assert_located(error, path, "note", 2)


def test_header_only_file_has_no_data_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "h.csv", HEADER)
    error, message = located(path)
    assert_located(error, path, None, None)
    assert message.endswith("no data rows")


def test_missing_file(tmp_path: Path) -> None:
    error, _ = located(tmp_path / "gone.csv")
    assert error.problem == "file not found"


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A file of several read blocks (over 1 MiB), so errors can sit in a later block."""
    n = 120_000
    path = tmp_path_factory.mktemp("big") / "big.csv"
    write(path, HEADER + good_rows(n))
    return path, n


def test_big_file_streams_every_row(big_csv: tuple[Path, int]) -> None:
    path, n = big_csv
    chunks = read_all(path, chunk_rows=50_000)
    assert [c.n_rows for c in chunks] == [50_000, 50_000, 20_000]
    assert chunks[-1].columns["amount"][-1] == n - 0.5


@pytest.mark.parametrize("bad_row", [3, 70_001, 119_999])
def test_text_in_a_later_block_is_located(
    tmp_path: Path, big_csv: tuple[Path, int], bad_row: int
) -> None:
    path, _ = big_csv
    lines = path.read_text().splitlines(keepends=True)
    lines[bad_row] = "12,three,c1,x\n"  # lines[0] is the header
    copy = write(tmp_path / "big_bad.csv", "".join(lines))
    error, message = located(copy, chunk_rows=4_096)
    assert_located(error, copy, "hour", bad_row)
    assert "'three'" in message


def test_row_longer_than_a_read_block(tmp_path: Path, big_csv: tuple[Path, int]) -> None:
    path, _ = big_csv
    text = path.read_text() + "1,2,a," + "x" * (3 << 20) + "\n"
    copy = write(tmp_path / "long.csv", text)
    with pytest.raises(DataError, match="longer than") as caught:
        read_all(copy, chunk_rows=1_000, keep_batch=True)
    assert caught.value.file == str(copy)


def test_bad_arguments(tmp_path: Path) -> None:
    path = write(tmp_path / "ok.csv", HEADER + good_rows(3))
    with pytest.raises(ValueError, match="chunk_rows"):
        read_all(path, chunk_rows=0)
    with pytest.raises(SpecError, match="both numeric and categorical"):
        read_all(path, extra_categorical=("amount",))
    with pytest.raises(SpecError, match="no columns"):
        read_all(path, CsvSchema())


# --- infer_schema --------------------------------------------------------------------------


def test_infer_schema(tmp_path: Path) -> None:
    rows = ["transaction_id,timestamp,amount,tran_code,channel,hour,label,gappy,blank_text,empty"]
    for i in range(300):
        gap = "" if i == 41 else str(i)
        blank = "" if i == 7 else "t"
        rows.append(
            f"tx-{i:06d},2026-01-01T00:{i // 60:02d}:{i % 60:02d}Z,{i * 1.25 - 3},"
            f"{i % 4:02d},{'pos' if i % 2 else 'ecom'},{i % 24},{i % 2},{gap},{blank},"
        )
    path = write(tmp_path / "tx.csv", "\n".join(rows) + "\n")
    inferred = infer_schema(path, label_column="label")
    assert inferred.schema == CsvSchema(
        numeric=("amount", "hour"), categorical=("tran_code", "channel")
    )
    assert set(inferred.skipped) == {"transaction_id", "timestamp", "gappy", "blank_text", "empty"}
    assert "more than max_categories=100" in inferred.skipped["transaction_id"]
    assert "row 42" in inferred.skipped["gappy"]
    assert "row 8" in inferred.skipped["blank_text"]
    assert "no values" in inferred.skipped["empty"]


def test_infer_schema_codes_with_many_values_are_skipped(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", "code\n" + "".join(f"{i:04d}\n" for i in range(50)))
    inferred = infer_schema(path, max_categories=10)
    assert inferred.schema == CsvSchema()
    assert "codes" in inferred.skipped["code"]


def test_infer_schema_only_looks_at_the_sample(tmp_path: Path) -> None:
    path = write(tmp_path / "s.csv", "x\n1\n2\n3\nlater text\n")
    assert infer_schema(path, sample_rows=3).schema == CsvSchema(numeric=("x",))
    assert infer_schema(path).schema == CsvSchema(categorical=("x",))


def test_infer_schema_label_must_exist(tmp_path: Path) -> None:
    path = write(tmp_path / "l.csv", "a,b\n1,2\n")
    with pytest.raises(DataError, match="label column") as caught:
        infer_schema(path, label_column="is_fraud")
    assert_located(caught.value, path, "is_fraud", None)


def test_infer_schema_needs_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "h.csv", "a,b\n")
    with pytest.raises(DataError, match="no data rows"):
        infer_schema(path)


def test_infer_schema_locates_bad_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "a,b\n1,2\n3\n")
    with pytest.raises(DataError, match="expected 2 fields, found 1") as caught:
        infer_schema(path)
    assert caught.value.row == 2


# --- StratifiedSplitter --------------------------------------------------------------------


def split_all(
    splitter: StratifiedSplitter, strata: np.ndarray | None, sizes: list[int]
) -> np.ndarray:
    parts, start = [], 0
    for size in sizes:
        part = None if strata is None else strata[start : start + size]
        parts.append(splitter.assign(part, size))
        start += size
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


@st.composite
def strata_and_chunks(draw: st.DrawFn) -> tuple[np.ndarray, list[int], float]:
    n = draw(st.integers(0, 400))
    labels = draw(st.lists(st.sampled_from(["01", "05", "07", "12", "20"]), min_size=n, max_size=n))
    sizes: list[int] = []
    left = n
    while left:
        size = draw(st.integers(1, left))
        sizes.append(size)
        left -= size
    fraction = draw(st.sampled_from([0.0, 0.05, 0.2, 1 / 3, 0.5, 0.9, 1.0]))
    return np.array(labels, dtype=object), sizes, fraction


@settings(max_examples=60, deadline=None)
@given(strata_and_chunks(), st.integers(0, 2**32 - 1))
def test_each_stratum_share_stays_within_one_row(
    case: tuple[np.ndarray, list[int], float], seed: int
) -> None:
    strata, sizes, fraction = case
    splitter = StratifiedSplitter(fraction, seed=seed)
    seen: Counter[str] = Counter()
    test: Counter[str] = Counter()
    start = 0
    for size in sizes:
        part = strata[start : start + size]
        chosen = splitter.assign(part, size)
        assert chosen.dtype == np.bool_
        assert chosen.shape == (size,)
        seen.update(part.tolist())
        test.update(part[chosen].tolist())
        for key, count in seen.items():
            assert abs(test[key] - fraction * count) < 1.0
        start += size


@settings(max_examples=30, deadline=None)
@given(strata_and_chunks(), st.integers(0, 2**32 - 1))
def test_same_seed_and_chunks_give_the_same_split(
    case: tuple[np.ndarray, list[int], float], seed: int
) -> None:
    strata, sizes, fraction = case
    first = split_all(StratifiedSplitter(fraction, seed=seed), strata, sizes)
    again = split_all(StratifiedSplitter(fraction, seed=seed), strata, sizes)
    np.testing.assert_array_equal(first, again)


def test_different_seeds_differ() -> None:
    strata = np.array(["a", "b"] * 500, dtype=object)
    first = split_all(StratifiedSplitter(0.2, seed=1), strata, [300, 700])
    other = split_all(StratifiedSplitter(0.2, seed=2), strata, [300, 700])
    assert first.sum() == other.sum() == 200
    assert not np.array_equal(first, other)


def test_rows_are_drawn_at_random_inside_a_chunk() -> None:
    chosen = StratifiedSplitter(0.25, seed=3).assign(None, 4_000)
    assert chosen.sum() == 1_000
    positions = np.flatnonzero(chosen)
    # Not a block at the start or end: spread like a uniform sample (mean near the middle).
    assert positions.min() < 100
    assert positions.max() > 3_900
    assert abs(positions.mean() - 2_000) < 150


def test_no_strata_is_one_stratum() -> None:
    splitter = StratifiedSplitter(0.3, seed=0)
    total = sum(int(splitter.assign(None, size).sum()) for size in [7, 1, 13, 50, 29])
    assert abs(total - 0.3 * 100) < 1.0


def test_tiny_strata_are_unbiased() -> None:
    # One row per stratum: each row is a test row with probability test_fraction.
    strata = np.arange(5_000).astype(str).astype(object)
    chosen = StratifiedSplitter(0.2, seed=4).assign(strata, 5_000)
    assert 850 < chosen.sum() < 1_150


def test_numeric_strata_and_nan() -> None:
    strata = np.array([0.0, 1.0, np.nan, np.nan, 1.0, 0.0] * 50)
    splitter = StratifiedSplitter(0.5, seed=5)
    chosen = np.concatenate([splitter.assign(strata[i : i + 6], 6) for i in range(0, 300, 6)])
    for value in (0.0, 1.0):
        assert chosen[strata == value].sum() == 50
    assert chosen[np.isnan(strata)].sum() == 50


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan")])
def test_bad_test_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        StratifiedSplitter(fraction)


def test_strata_length_must_match() -> None:
    with pytest.raises(ValueError, match="shape"):
        StratifiedSplitter().assign(np.array(["a", "b"], dtype=object), 3)
