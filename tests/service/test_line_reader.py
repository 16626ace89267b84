"""Tests for service.line_reader: the C reader of simple lines gives pyarrow's values.

Every block the reader reads must give the numbers and category codes that pyarrow's CSV
parser gives for it (score-file's other reader, and the one training uses); every block it
does not read must be one it says so of (None), never a guess.
"""

from __future__ import annotations

import ctypes
import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service import kernels
from service.line_reader import LineReader, LineValues

HEADER = ["id", "amount", "code", "note", "count"]
CODES = ["05", "10", "a,b", "é"]


def reader(categories: list[str] = CODES) -> LineReader:
    return LineReader(HEADER, ["amount", "count"], ["code"], [categories])


def pyarrow_values(text: bytes, categories: list[str] = CODES) -> tuple[np.ndarray, np.ndarray]:
    """(numbers (2, rows), codes (1, rows)) as pyarrow reads ``text``: the reference."""
    table = pacsv.read_csv(
        io.BytesIO(text),
        read_options=pacsv.ReadOptions(column_names=HEADER),
        convert_options=pacsv.ConvertOptions(
            column_types={"amount": pa.float64(), "count": pa.float64(), "code": pa.string()}
        ),
    )
    numbers = np.stack([table.column(c).to_numpy() for c in ("amount", "count")])
    found = pc.index_in(table.column("code"), value_set=pa.array(categories))
    return numbers, pc.fill_null(found, -1).to_numpy()[None, :]


def read(text: bytes, categories: list[str] = CODES) -> LineValues | None:
    return reader(categories).read(bytearray(text), len(text))


def assert_same_as_pyarrow(text: bytes, categories: list[str] = CODES) -> None:
    values = read(text, categories)
    assert values is not None, text
    numbers, codes = pyarrow_values(text, categories)
    # Bit for bit: -0.0 and 0.0 differ here.
    assert values.numbers.view(np.int64).tolist() == numbers.view(np.int64).tolist(), text
    assert values.codes.tolist() == codes.tolist()
    ends = [i for i, b in enumerate(text) if b == ord("\n")]
    assert values.ends.tolist() == ends
    assert values.starts.tolist() == [0] + [end + 1 for end in ends[:-1]]


def test_a_simple_block_is_read_as_pyarrow_reads_it() -> None:
    text = (
        b'"tx-1",22.2,"05","free, text",3\n'
        b"tx-2,-0.0078,10,,0\n"
        b'"tx-3","150.24","a,b","",-0\n'  # quoted numbers; a category with a comma
        b"tx-4,007.50,\xc3\xa9,x,1234567890123456\n"  # leading zeros, UTF-8, 16 digits
        b"tx-5,3,99,x,-1\n"  # a category not seen in training: -1
    )
    assert_same_as_pyarrow(text)
    values = read(text)
    assert values is not None
    assert values.codes.tolist() == [[0, 1, 2, 3, -1]]
    assert np.signbit(values.numbers[1, 2])  # "-0" is -0.0, as pyarrow reads it


decimal = st.builds(
    lambda sign, whole, fraction: f"{sign}{whole}{'.' + fraction if fraction else ''}",
    st.sampled_from(["", "-"]),
    st.text("0123456789", min_size=1, max_size=12),
    st.text("0123456789", min_size=0, max_size=24),
)


def exact(text: str) -> bool:
    """Whether the reader reads decimal ``text`` (else it leaves the block to pyarrow)."""
    whole, _, fraction = text.lstrip("-").partition(".")
    fraction = fraction.rstrip("0")
    return int(whole + fraction) <= 2**53 and len(fraction) <= 22


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(decimal, decimal, st.booleans()), min_size=1, max_size=20))
def test_decimals_round_as_pyarrow_rounds_them(rows: list[tuple[str, str, bool]]) -> None:
    lines = []
    for amount, count, quoted in rows:
        shown = f'"{amount}"' if quoted else amount
        lines.append(f"id,{shown},05,,{count}\n")
    text = "".join(lines).encode()
    if all(exact(amount) and exact(count) for amount, count, _ in rows):
        assert_same_as_pyarrow(text)
    else:
        assert read(text) is None


def test_numbers_at_the_edges_of_the_fast_path() -> None:
    # A mantissa of 2**53; 22 digits after the point; trailing zeros, which change nothing.
    assert_same_as_pyarrow(b"i,9007199254740992,05,,0.0000000000000000000001\n")
    assert_same_as_pyarrow(b"i,-0.9007199254740992,05,,1000000000.000000000000000000000\n")
    assert_same_as_pyarrow(b"i,000000000000000000000000123.4500,05,,0.1000000000000000000000\n")
    assert read(b"i,0.9007199254740993,05,,1\n") is None  # a mantissa over 2**53
    assert read(b"i,1,05,,0.00000000000000000000001\n") is None  # 23 after the point


@pytest.mark.parametrize(
    "line",
    [
        b"i,1e3,05,,1\n",  # an exponent
        b"i,+1,05,,1\n",  # a plus sign
        b"i,.5,05,,1\n",  # no digit before the point
        b"i,1.,05,,1\n",  # none after it
        b"i,,05,,1\n",  # an empty number
        b"i,NA,05,,1\n",  # a missing-value marker
        b"i,1 ,05,,1\n",  # a space
        b"i,9007199254740993,05,,1\n",  # a mantissa over 2**53
        b"i,1,,,1\n",  # an empty category
        b'i,1,"",,1\n',  # an empty quoted category
        b'i,1,05,"a""b",1\n',  # an escaped quote
        b'i,1,05,a"b,1\n',  # a quote inside an unquoted value
        b'i,1,05,"a"b,1\n',  # text after a closing quote
        b'i,1,05,"a\nb",1\n',  # a value spanning lines
        b"i,1,05,,1,extra\n",  # a value too many
        b"i,1,05,,\n",  # an empty last number
        b"i,1,05\n",  # values missing
        b"\n",  # a blank line
        b"i,1,05,,1",  # no newline at the end
    ],
)
def test_lines_that_are_not_simple_are_left_to_pyarrow(line: bytes) -> None:
    text = b"tx-1,22.2,05,x,3\n" + line
    assert read(text) is None


def test_lines_ending_with_cr_lf_are_read_as_those_ending_with_lf() -> None:
    lf = b'tx-1,22.2,05,x,3\n"tx-2",1,"10","y",4\ntx-3,5,99,,-1.5\n'
    crlf = lf.replace(b"\n", b"\r\n")
    one, other = read(lf), read(crlf)
    assert one is not None
    assert other is not None
    assert other.numbers.tolist() == one.numbers.tolist()
    assert other.codes.tolist() == one.codes.tolist()
    # Each line's text, less its line end.
    lines = [crlf[s:e] for s, e in zip(other.starts.tolist(), other.ends.tolist(), strict=True)]
    assert lines == lf.splitlines()


@pytest.mark.parametrize(
    "text",
    [
        b"tx-1,22.2,05,x,3\ntx-2,1,10,y,4\r\n",  # LF, then CR LF
        b"tx-1,22.2,05,x,3\r\ntx-2,1,10,y,4\n",  # CR LF, then LF
        b"tx-1,22.2,05,x\r,3\r\n",  # a lone CR (pyarrow ends a line there)
        b'tx-1,22.2,05,"x\ry",3\r\n',  # a CR in a quoted value
        b"tx-1,22.2,05,x,3\r\r\n",  # CR CR LF
        b"tx-1,22.2,05,x,3\r\n\r\n",  # a blank line
    ],
)
def test_carriage_returns_other_than_in_every_line_end_are_not_read(text: bytes) -> None:
    assert read(text) is None


def test_a_block_may_be_read_from_the_start_of_a_larger_buffer() -> None:
    text = b"tx-1,22.2,05,x,3\ntx-2,1,10,y,4\n"
    block = bytearray(text + b"tx-3,9")  # a line cut short after the block's end
    values = reader().read(block, len(text))
    assert values is not None
    assert values.numbers.tolist() == [[22.2, 1.0], [3.0, 4.0]]
    with pytest.raises(ValueError, match="size 38 is outside the block of 37 bytes"):
        reader().read(block, len(block) + 1)


def test_many_categories_and_their_hash_collisions() -> None:
    categories = [f"c{i}" for i in range(1000)] + ["", "x" * 100]
    lines = [f"i,1,c{i},,1\n" for i in range(0, 1200, 7)] + ["i,1," + "x" * 100 + ",,1\n"]
    assert_same_as_pyarrow("".join(lines).encode(), categories)


def test_the_kernel_counts_lines() -> None:
    data = np.frombuffer(b"a\nb\n\nc", dtype=np.uint8)
    assert kernels.count_lines(data, len(data)) == 3
    assert kernels.count_lines(data, 2) == 1


def test_an_unbuilt_library_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels.importlib.util, "find_spec", lambda _: None)
    with pytest.raises(ImportError, match=r"service\._kernels is not built: install the package"):
        kernels._load()


def test_arguments_of_the_wrong_type_are_refused_before_the_call() -> None:
    data = np.frombuffer(b"a\n", dtype=np.uint8)
    with pytest.raises(ctypes.ArgumentError, match="array must have data type uint8"):
        kernels.count_lines(data.astype(np.int64), 2)
