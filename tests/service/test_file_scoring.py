"""Tests for service.file_scoring: the same verdicts as score_columns, input text kept, errors.

score_file has a fast path (a file of one record per line: lines copied as they are) and a
general one (any CSV pyarrow reads: values re-quoted); both are checked against
``score_columns`` on the same rows, value for value.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from service import block_scoring, column_verdicts, csv_output, file_scoring, kernels
from service.file_scoring import OUTPUT_COLUMNS, score_file
from service.scoring import ScoringModel, score_columns
from tests.factories import make_thresholds
from training import kmeans
from training.demo import DEMO_FEATURES, DemoConfig, generate, write_csv
from training.errors import DataError, SpecError
from training.features import CategoricalField, FeatureFitter, FeatureSpec, NumericField
from training.thresholds import Thresholds

K = 8


@pytest.fixture(scope="module")
def model() -> ScoringModel:
    """The demo feature spec fitted on demo rows; some of them as centroids, one rare."""
    table = generate(DemoConfig(rows=3_000, seed=0))
    columns = {
        name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names
    }
    fitter = FeatureFitter(FeatureSpec.from_config(DEMO_FEATURES))
    fitter.update(columns)
    spec = fitter.finish()
    centroids = spec.transform(columns).X[:: 3_000 // K][:K]
    rare = np.zeros(K, dtype=bool)
    rare[-1] = True
    thresholds = make_thresholds("m1", K, values=np.linspace(1.0, 3.0, K), rare=rare)
    return scoring_model("m1", spec, centroids, thresholds)


def scoring_model(
    version: str, spec: FeatureSpec, centroids: Any, thresholds: Thresholds | None = None
) -> ScoringModel:
    """A model of ``spec`` and ``centroids``, thresholds version 1 (default: make_thresholds)."""
    return ScoringModel(
        model_version=version,
        thresholds_version=1,
        spec=spec,
        centroids=centroids,
        thresholds=thresholds or make_thresholds(version, len(centroids)),
        typical=tuple(spec.typical_values(c) for c in centroids),
    )


def demo_csv(path: Path, rows: int = 4_000, seed: int = 5) -> Path:
    """Demo transactions with a few categories never seen in training."""
    table = generate(DemoConfig(rows=rows, seed=seed))
    codes = table.column("tran_code").to_numpy(zero_copy_only=False).copy()
    codes[::97] = "99"
    channels = table.column("channel").to_numpy(zero_copy_only=False).copy()
    channels[::131] = "phone"
    table = table.set_column(3, "tran_code", pa.array(codes, type=pa.string()))
    table = table.set_column(4, "channel", pa.array(channels, type=pa.string()))
    write_csv(table, path)
    return path


def records(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        return [row for row in csv.reader(fh) if row]


def expected(model: ScoringModel, path: Path) -> dict[str, Any]:
    """score_columns on the file's rows, read by pyarrow with the model's column types."""
    schema = model.spec.csv_schema()
    table = pacsv.read_csv(
        path,
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types={
                **{name: pa.float64() for name in schema.numeric},
                **{name: pa.string() for name in schema.categorical},
            },
            include_columns=list(schema.columns),
            strings_can_be_null=False,
        ),
    )
    columns = {name: table.column(name).to_numpy(zero_copy_only=False) for name in schema.columns}
    scored = score_columns(model, columns)
    return {
        "cluster": scored.cluster,
        "distance": scored.distance,
        "threshold": scored.threshold,
        "score": scored.score,
        "anomalous": scored.anomalous,
        "top_reason": scored.top_reason,
    }


def check_output(model: ScoringModel, source: Path, target: Path) -> None:
    """Input values kept, the verdict columns added, each equal to score_columns'."""
    given, written = records(source), records(target)
    width = len(given[0])
    assert written[0] == given[0] + list(OUTPUT_COLUMNS)
    assert len(written) == len(given)
    assert [row[:width] for row in written] == given
    want = expected(model, source)
    added = list(zip(*(row[width:] for row in written[1:]), strict=True))
    cluster, distance, threshold, score, anomalous, top_reason = added
    np.testing.assert_array_equal(np.array(cluster, dtype=np.int64), want["cluster"])
    # Exactly equal: the text is the shortest one that reads back as the same float.
    for name, text in (("distance", distance), ("threshold", threshold), ("score", score)):
        np.testing.assert_array_equal(np.array([float(t) for t in text]), want[name], name)
    assert [t == "true" for t in anomalous] == want["anomalous"].tolist()
    assert set(anomalous) <= {"true", "false"}
    assert list(top_reason) == want["top_reason"].tolist()


@pytest.mark.parametrize("chunk_rows", [65_536, 700])
def test_verdicts_equal_score_columns(model: ScoringModel, tmp_path: Path, chunk_rows: int) -> None:
    source = demo_csv(tmp_path / "in.csv")
    target = tmp_path / "out" / "scored.csv"
    summary = score_file(model, source, target, chunk_rows=chunk_rows)
    check_output(model, source, target)
    assert summary.rows == 4_000
    assert summary.anomalous == int(expected(model, source)["anomalous"].sum())
    assert summary.anomalous > 0
    assert (summary.model_version, summary.thresholds_version) == ("m1", 1)
    assert sorted(p.name for p in target.parent.iterdir()) == ["scored.csv"]


def test_lines_are_copied_as_they_are(model: ScoringModel, tmp_path: Path) -> None:
    source = demo_csv(tmp_path / "in.csv", rows=500)
    target = tmp_path / "scored.csv"
    score_file(model, source, target)
    lines = source.read_text().splitlines()
    out = target.read_text().splitlines()
    assert all(o.startswith(i + ",") for i, o in zip(lines[1:], out[1:], strict=True))
    assert target.read_bytes().endswith(b'"\n')


def rewrite(source: Path, target: Path, edit: Any) -> Path:
    """``target`` with ``source``'s lines after ``edit(lines)`` (a list of str, no newlines)."""
    lines = source.read_text().splitlines()
    target.write_text(edit(lines))
    return target


def with_multiline_values(lines: list[str]) -> str:
    """Rows whose transaction ids hold quotes, commas and newlines."""
    out = [lines[0]]
    for i, line in enumerate(lines[1:]):
        first, rest = line.split(",", 1)
        if i % 7 == 3:
            first = f'"id ""{i}"",\nsecond line"'
        out.append(f"{first},{rest}")
    return "\n".join(out) + "\n"


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda lines: "\r\n".join(lines) + "\r\n", id="crlf"),
        pytest.param(lambda lines: "\n".join(lines), id="no-final-newline"),
        pytest.param(lambda lines: "\n".join([*lines[:50], "", *lines[50:]]) + "\n\n", id="blank"),
        pytest.param(lambda lines: "\ufeff" + "\n".join(lines) + "\n", id="bom"),
        pytest.param(with_multiline_values, id="multiline-values"),
    ],
)
@pytest.mark.parametrize("block_bytes", [1 << 20, 200, 333])
def test_any_csv_gives_the_same_verdicts(
    model: ScoringModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    edit: Any,
    block_bytes: int,
) -> None:
    # Small blocks: the fast path's cuts fall anywhere, inside quoted values too.
    monkeypatch.setattr(file_scoring, "_SAMPLE_BYTES", block_bytes)
    source = rewrite(demo_csv(tmp_path / "demo.csv", rows=600), tmp_path / "in.csv", edit)
    target = tmp_path / "scored.csv"
    score_file(model, source, target, chunk_rows=3)
    check_output(model, source, target)


def every_tenth(change: Any) -> Any:
    """An edit: ``change(values)`` on every tenth data line (values split at commas)."""

    def edit(lines: list[str]) -> str:
        out = [lines[0]]
        for i, line in enumerate(lines[1:]):
            values = line.split(",")
            out.append(",".join(change(values) if i % 10 == 0 else values))
        return "\n".join(out) + "\n"

    return edit


def amount_with_exponent(values: list[str]) -> list[str]:
    values[2] = f"{float(values[2]):e}"
    return values


def id_with_escaped_quotes(values: list[str]) -> list[str]:
    values[0] = '"a ""quoted"" id"'
    return values


def quoted_numbers(values: list[str]) -> list[str]:
    return [f'"{v}"' if v[:1].isdigit() else v for v in values]


@pytest.mark.parametrize(
    ("edit", "by_pyarrow"),
    [
        pytest.param(every_tenth(amount_with_exponent), True, id="exponent"),
        pytest.param(every_tenth(id_with_escaped_quotes), True, id="escaped-quotes"),
        pytest.param(every_tenth(quoted_numbers), False, id="quoted-numbers"),
    ],
)
def test_lines_the_c_reader_leaves_are_parsed_by_pyarrow(
    model: ScoringModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    edit: Any,
    by_pyarrow: bool,
) -> None:
    # Still one record a line (the fast path), but not simple: pyarrow parses those blocks.
    parsed: list[int] = []
    original = block_scoring.BlockScorer._parse_lines

    def parse(self: block_scoring.BlockScorer, data: pa.Buffer) -> Any:
        parsed.append(data.size)
        return original(self, data)

    monkeypatch.setattr(block_scoring.BlockScorer, "_parse_lines", parse)
    general = pytest.fail  # the general path is not taken
    monkeypatch.setattr(block_scoring.BlockScorer, "score", lambda *_: general("general path"))
    source = rewrite(demo_csv(tmp_path / "demo.csv", rows=600), tmp_path / "in.csv", edit)
    target = tmp_path / "scored.csv"
    score_file(model, source, target, chunk_rows=40)
    check_output(model, source, target)
    assert bool(parsed) == by_pyarrow


@pytest.mark.parametrize("chunk_rows", [40, 32_768])
def test_cr_lf_line_ends_take_the_fast_path(
    model: ScoringModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk_rows: int
) -> None:
    # Windows line ends: each line is copied less its CR LF; the output's line ends are LF.
    general = pytest.fail
    monkeypatch.setattr(block_scoring.BlockScorer, "score", lambda *_: general("general path"))
    source = rewrite(
        demo_csv(tmp_path / "demo.csv", rows=600),
        tmp_path / "in.csv",
        lambda lines: "\r\n".join(lines) + "\r\n",
    )
    target = tmp_path / "scored.csv"
    score_file(model, source, target, chunk_rows=chunk_rows)
    check_output(model, source, target)
    written = target.read_bytes()
    assert b"\r" not in written
    assert written.count(b"\n") == 601


def test_last_column_numeric_with_multiline_values(
    model: ScoringModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(file_scoring, "_SAMPLE_BYTES", 150)

    def edit(lines: list[str]) -> str:
        # merchant_risk last, a quoted note before it that sometimes spans lines
        out = []
        for i, line in enumerate(lines):
            fields = line.split(",")
            note = "note" if i == 0 else (f'"a\n{i}"' if i % 5 == 0 else f"n{i}")
            out.append(",".join([*fields[:8], fields[9], note, fields[8]]))
        return "\n".join(out) + "\n"

    source = rewrite(demo_csv(tmp_path / "demo.csv", rows=300), tmp_path / "in.csv", edit)
    target = tmp_path / "scored.csv"
    score_file(model, source, target, chunk_rows=2)
    check_output(model, source, target)


@pytest.mark.parametrize(
    ("value", "problem"),
    [("twelve", "not a number"), ("NA", "missing value"), ("inf", "not a finite number")],
)
@pytest.mark.parametrize("row", [5, 3_500])
def test_bad_number_names_file_column_and_row(
    model: ScoringModel, tmp_path: Path, value: str, problem: str, row: int
) -> None:
    def edit(lines: list[str]) -> str:
        fields = lines[row].split(",")
        fields[2] = value  # amount
        lines[row] = ",".join(fields)
        return "\n".join(lines) + "\n"

    source = rewrite(demo_csv(tmp_path / "demo.csv"), tmp_path / "bad.csv", edit)
    target = tmp_path / "out" / "scored.csv"
    with pytest.raises(DataError) as caught:
        score_file(model, source, target, chunk_rows=1_000)
    message = str(caught.value)
    assert str(source) in message
    assert "amount" in message
    assert f"row {row}" in message
    assert problem in message
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_empty_category_is_an_error(model: ScoringModel, tmp_path: Path) -> None:
    def edit(lines: list[str]) -> str:
        lines[42] = lines[42].replace('"ecom"', '""').replace('"pos"', '""').replace('"atm"', '""')
        return "\n".join(lines) + "\n"

    source = rewrite(demo_csv(tmp_path / "demo.csv", rows=100), tmp_path / "bad.csv", edit)
    with pytest.raises(DataError, match=r"column 'channel'.*row 42|row 42.*channel"):
        score_file(model, source, tmp_path / "scored.csv")
    assert not (tmp_path / "scored.csv").exists()


def test_bad_value_before_a_broken_row_is_named_first(model: ScoringModel, tmp_path: Path) -> None:
    # The rows are read (1 MB blocks) ahead of scoring: the broken row is read first.
    def edit(lines: list[str]) -> str:
        fields = lines[10].split(",")
        fields[2] = "oops"
        lines[10] = ",".join(fields)
        lines[19_000] += ",extra"
        return "\n".join(lines) + "\n"

    demo = demo_csv(tmp_path / "demo.csv", rows=20_000)
    source = rewrite(demo, tmp_path / "bad.csv", edit)
    with pytest.raises(DataError, match="row 10"):
        score_file(model, source, tmp_path / "scored.csv", chunk_rows=500)


def test_wrong_field_count_names_the_row(model: ScoringModel, tmp_path: Path) -> None:
    def edit(lines: list[str]) -> str:
        lines[7] += ",extra"
        return "\n".join(lines) + "\n"

    source = rewrite(demo_csv(tmp_path / "demo.csv", rows=100), tmp_path / "bad.csv", edit)
    with pytest.raises(DataError, match="row 7"):
        score_file(model, source, tmp_path / "scored.csv")
    assert sorted(tmp_path.iterdir()) == [source, tmp_path / "demo.csv"]


def test_missing_column_and_clashing_column(model: ScoringModel, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("amount,tran_code\n1,01\n")
    with pytest.raises(DataError, match="channel"):
        score_file(model, source, tmp_path / "scored.csv")
    demo = demo_csv(tmp_path / "demo.csv", rows=10)
    clash = rewrite(
        demo,
        tmp_path / "clash.csv",
        lambda lines: ",\n".join([*lines, ""]).replace(",\n", ",score\n", 1),
    )
    with pytest.raises(DataError, match=r"already has column.*score"):
        score_file(model, clash, tmp_path / "scored.csv")
    assert not (tmp_path / "scored.csv").exists()


def test_header_only_has_no_data_rows(model: ScoringModel, tmp_path: Path) -> None:
    demo = demo_csv(tmp_path / "demo.csv", rows=10)
    source = rewrite(demo, tmp_path / "in.csv", lambda lines: lines[0] + "\n")
    with pytest.raises(DataError, match="no data rows"):
        score_file(model, source, tmp_path / "scored.csv")
    assert not (tmp_path / "scored.csv").exists()


def test_values_too_far_out_name_column_and_row(tmp_path: Path) -> None:
    # FeatureSpec.transform refuses them (their distance would overflow): so does score_file.
    spec = FeatureSpec((NumericField("a"), NumericField("b", "log1p")), fitted=True)
    centroids = np.array([[0.0, 0.0], [1.0, 1.0]])
    model = scoring_model("m2", spec, centroids)
    source = tmp_path / "in.csv"
    source.write_text("a,b\n1e99,1e300\n-1e50,1\n0.5,0.25\n1,1\n")
    target = tmp_path / "scored.csv"
    score_file(model, source, target)
    check_output(model, source, target)
    source.write_text("a,b\n1e99,1e300\n-1e50,1\n-2e100,0.25\n1,1\n")
    with pytest.raises(SpecError):
        expected(model, source)
    with pytest.raises(DataError, match=r"'a'.*row 3.*-2e\+100 is out of range"):
        score_file(model, source, tmp_path / "again.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "scored.csv"]


@pytest.mark.parametrize(
    "block",
    [
        pytest.param('"tx-1",2026,1.5,"01","pos",3,1.0,1,0.1,"a\n', id="open-quote-in-last-column"),
        pytest.param('"tx-1",2026,1.5,"01","pos",3,1.0,1,"0.1\n', id="open-quote-before"),
        pytest.param('"tx-1",2026,1.5,"01","pos",3,1.0,1,0.1,"a\nb"\n', id="newline-in-value"),
        pytest.param('"tx-1",2026,1.5,"01","pos",3,1.0,1,0.1,0\n\n', id="blank-line"),
        pytest.param('"tx-1",2026,1.5,"01","pos",3,1.0,1,0.1,0\r\n', id="crlf-after-lf"),
        pytest.param('"tx-1",2026,1.5,"01","pos",3,1.0,1,0.1,"a\rb"\n', id="lone-cr"),
        pytest.param('"tx-1",2026,twelve,"01","pos",3,1.0,1,0.1,0\n', id="bad-number"),
        pytest.param('"tx-1",2026,1.5,"","pos",3,1.0,1,0.1,0\n', id="empty-category"),
        pytest.param('"tx-\xff",2026,1.5,"01","pos",3,1.0,1,0.1,0\n', id="not-utf8"),
    ],
)
def test_fast_path_refuses_what_it_cannot_copy_line_by_line(
    model: ScoringModel, block: str
) -> None:
    header = [
        "transaction_id",
        "timestamp",
        "amount",
        "tran_code",
        "channel",
        "hour",
        "km_from_home",
        "tx_last_24h",
        "merchant_risk",
        "note",
    ]
    scorer = block_scoring.BlockScorer(model, header, "in.csv")
    good = '"tx-0",2026,1.5,"01","pos",3,1.0,1,0.1,"x"\n'
    assert scorer.score_lines(bytearray(good.encode())).rows == 1
    data = block.encode("latin-1" if "\xff" in block else "utf-8")
    with pytest.raises(block_scoring.NotLines):
        scorer.score_lines(bytearray(good.encode() + data))
    # A reused block: only its first ``size`` bytes are lines, whatever follows them.
    assert scorer.score_lines(bytearray(good.encode() + data), len(good)).rows == 1


def test_blocks_longer_than_a_scoring_block(model: ScoringModel, tmp_path: Path) -> None:
    # Rows are scored and their text assembled BLOCK_ROWS at a time: cross those edges,
    # with blocks of the file that end one row past one.
    rows = 2 * column_verdicts.BLOCK_ROWS + 2
    source = demo_csv(tmp_path / "in.csv", rows=rows)
    for chunk_rows in (65_536, 5_000):
        target = tmp_path / f"scored-{chunk_rows}.csv"
        assert score_file(model, source, target, chunk_rows=chunk_rows).rows == rows
        check_output(model, source, target)


@pytest.mark.parametrize(
    "edit", [None, lambda lines: "\r\n".join(lines) + "\r\n"], ids=["lines", "crlf"]
)
def test_a_last_chunk_of_one_row_is_scored_as_score_columns_does(
    model: ScoringModel, tmp_path: Path, edit: Any
) -> None:
    # NearestCentroids.assign searches its rows in chunks, here a last chunk of one row: with
    # a BLAS product, that row would round otherwise than the same row among others.
    rows = kmeans.ASSIGN_CHUNK_ROWS + 1
    source = demo_csv(tmp_path / "in.csv", rows=rows)
    if edit is not None:  # CR LF line ends
        source = rewrite(source, tmp_path / "crlf.csv", edit)
    for chunk_rows in (65_536, 5_000):
        target = tmp_path / f"scored-{chunk_rows}.csv"
        summary = score_file(model, source, target, chunk_rows=chunk_rows)
        check_output(model, source, target)
        assert summary.anomalous == int(expected(model, source)["anomalous"].sum())


def test_a_file_of_one_row_is_scored_as_score_columns_does(
    model: ScoringModel, tmp_path: Path
) -> None:
    # score_columns searches a batch of one row otherwise still (in plain Python), with the
    # same operations.
    for seed in range(5):
        source = demo_csv(tmp_path / f"in-{seed}.csv", rows=1, seed=seed)
        target = tmp_path / f"scored-{seed}.csv"
        assert score_file(model, source, target).rows == 1
        check_output(model, source, target)


def test_zero_parts_and_unseen_categories_rank_as_score_columns(
    model: ScoringModel, tmp_path: Path
) -> None:
    # Rows that are centroids: every part is 0, so no field may be named. One centroid has
    # no channel at all, so an unseen channel there has a part of 0 and is still named.
    table = generate(DemoConfig(rows=400, seed=7))
    columns = {n: table.column(n).to_numpy(zero_copy_only=False) for n in table.column_names}
    spec = model.spec
    centroids = spec.transform(columns).X[::50].copy()
    centroids[1, spec.field_slices["channel"]] = 0.0
    k = len(centroids)
    exact = scoring_model(
        "m3", spec, centroids, make_thresholds("m3", k, values=np.linspace(0.5, 1.5, k))
    )
    channels = columns["channel"].copy()
    channels[1::50] = "phone"  # right after each centroid's row: the same row, unseen channel
    table = table.set_column(4, "channel", pa.array(channels, type=pa.string()))
    source = tmp_path / "in.csv"
    write_csv(table.take(np.sort(np.r_[np.arange(400), np.arange(0, 400, 50)])), source)
    target = tmp_path / "scored.csv"
    score_file(exact, source, target)
    check_output(exact, source, target)
    reasons = {row[-1] for row in records(target)[1:]}
    assert {"", "channel"} <= reasons


@pytest.mark.parametrize(
    "values",
    [[0.1, 1.0, 2.5e-300, 123456.789, 1 / 3], [1.5, np.inf, -np.inf, np.nan, 0.1]],
    ids=["finite", "not-finite"],
)
def test_numbers_are_written_as_the_shortest_text_that_reads_back(values: list[float]) -> None:
    # Finite numbers by orjson; any that is not (JSON has none) sends all through pyarrow.
    numbers = np.array(values)
    pieces = csv_output._number_pieces(numbers)
    texts = [
        bytes(pieces.data[s : s + n]).decode()
        for s, n in zip(pieces.starts.tolist(), pieces.lengths.tolist(), strict=True)
    ]
    np.testing.assert_array_equal([float(t) for t in texts], numbers)
    assert texts[:2] in (["0.1", "1.0"], ["1.5", "inf"])  # shortest: no trailing digits


@pytest.mark.parametrize("size", [0, 1, 4, 13, 40])
def test_rows_are_joined_from_their_pieces(size: int) -> None:
    # join_rows: each row's line, constant, distance, constant, score, constant, end to end.
    data = bytes(range(33, 33 + 60)) * 2
    text = np.frombuffer(data, dtype=np.uint8)
    starts = np.array([0, 7, len(data) - size, 50], dtype=np.int64)  # one ending the data
    lengths = np.full(len(starts), size, dtype=np.int64)
    backwards = starts[::-1].copy()
    constants = np.frombuffer(b",0,|,1,|,t0,|,t1,|;false\n|;true\n".replace(b"|", b""), np.uint8)
    constant_lengths = np.array([3, 3, 4, 4, 7, 6], dtype=np.int64)
    constant_starts = np.concatenate([[0], np.cumsum(constant_lengths)[:-1]]).astype(np.int64)
    cluster = np.array([0, 1, 1, 0], dtype=np.int64)
    verdict = np.array([1, 0, 0, 1], dtype=np.int64)
    out = np.zeros(1000, dtype=np.uint8)

    def join(capacity: int) -> int:
        return int(
            kernels.join_rows(
                *(text, starts, lengths, text, backwards, lengths, text, starts, lengths),
                *(constants, constant_starts, constant_lengths, cluster, verdict, 2, 4),
                *(out, capacity),
            )
        )

    written = join(len(out))
    expected = b"".join(
        data[s : s + size]
        + [b",0,", b",1,"][c]
        + data[d : d + size]
        + [b",t0,", b",t1,"][c]
        + data[s : s + size]
        + [b";false\n", b";true\n"][v]
        for s, d, c, v in zip(starts, backwards, cluster, verdict, strict=True)
    )
    assert bytes(out[:written]) == expected
    out[:] = 0
    assert join(written - 1) == -1  # too small: nothing is written
    assert not out.any()


@pytest.mark.parametrize("scan_bytes", [3, 1 << 18])
def test_byte_positions_across_slices(monkeypatch: pytest.MonkeyPatch, scan_bytes: int) -> None:
    monkeypatch.setattr(csv_output, "_SCAN_BYTES", scan_bytes)
    data = b"a\nbc\n\n\nxyz\nq"
    assert csv_output.byte_positions(data, ord("\n")).tolist() == [1, 4, 5, 6, 10]
    assert csv_output.byte_positions(b"", ord("\n")).tolist() == []


@pytest.mark.parametrize(
    "fields",
    [
        (CategoricalField("channel", ("atm", "ecom")), CategoricalField("code", ("01",))),
        (NumericField("amount", "log1p"),),
    ],
    ids=["categorical-only", "numeric-only"],
)
def test_models_of_one_kind_of_field(tmp_path: Path, fields: tuple[Any, ...]) -> None:
    spec = FeatureSpec(fields, fitted=True)
    centroids = np.eye(2, spec.feature_dim) if spec.feature_dim > 1 else np.array([[0.0], [2.0]])
    model = scoring_model("m5", spec, centroids)
    source = tmp_path / "in.csv"
    source.write_text(
        "id,amount,channel,code\n1,5.5,atm,01\n2,-3,ecom,02\n3,0,pos,01\n4,12,atm,03\n"
    )
    target = tmp_path / "scored.csv"
    score_file(model, source, target)
    check_output(model, source, target)


def test_rows_scored_one_by_one_or_together_agree(model: ScoringModel) -> None:
    # Each row's verdict is its own, whatever the block (a BLAS product would round a row by
    # its place in the block).
    table = generate(DemoConfig(rows=200, seed=11))
    numbers = [
        table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        for name in model.spec._plan.numeric
    ]
    scorer = block_scoring.BlockScorer(model, table.column_names, "in.csv")
    codes = scorer._codes(table, 0, lines=True)
    together = scorer.columns.score(numbers, codes, 200)
    for i in range(200):
        alone = scorer.columns.score([v[i : i + 1] for v in numbers], codes[:, i : i + 1], 1)
        assert alone.distance[0] == together.distance[i]
        assert (alone.cluster[0], alone.reason[0]) == (together.cluster[i], together.reason[i])
