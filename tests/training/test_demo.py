"""Synthetic demo transactions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.demo import (
    DEMO_FEATURES,
    LABEL_COLUMN,
    TRAN_CODES,
    DemoConfig,
    generate,
    label_counts,
)


def test_shape_and_labelled_share() -> None:
    table = generate(DemoConfig(rows=20_000, seed=1, anomaly_share=0.02))
    assert table.num_rows == 20_000
    assert label_counts(table).tolist() == [19_600, 400]
    assert set(table.column("tran_code").to_pylist()) == set(TRAN_CODES)
    ids = table.column("transaction_id").to_pylist()
    assert len(set(ids)) == len(ids)


def test_reproducible_with_seed() -> None:
    assert generate(DemoConfig(rows=500, seed=4)).equals(generate(DemoConfig(rows=500, seed=4)))
    assert not generate(DemoConfig(rows=500, seed=4)).equals(generate(DemoConfig(rows=500, seed=5)))


def test_card_testing_ring_is_a_tight_group() -> None:
    table = generate(DemoConfig(rows=50_000, seed=2, card_testing_share=0.004))
    amount = table.column("amount").to_numpy()
    km = table.column("km_from_home").to_numpy()
    label = table.column(LABEL_COLUMN).to_numpy()
    ring = (np.abs(amount - 1.0) < 0.3) & (km > 7_000) & (label == 1)
    assert ring.sum() == pytest.approx(200, abs=5)
    assert amount[ring].std() < 0.1


def test_refunds_are_negative_and_timestamps_sorted() -> None:
    table = generate(DemoConfig(rows=5_000, seed=3))
    codes = np.array(table.column("tran_code").to_pylist())
    amount = table.column("amount").to_numpy()
    assert (amount[codes == "20"] < 0).all()
    stamps = table.column("timestamp").to_pylist()
    assert stamps == sorted(stamps)


def test_example_spec_matches_the_demo_spec() -> None:
    path = Path(__file__).resolve().parents[2] / "examples" / "features.json"
    assert json.loads(path.read_text()) == DEMO_FEATURES


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="rows"):
        DemoConfig(rows=0)
    with pytest.raises(ValueError, match="card_testing_share"):
        DemoConfig(anomaly_share=0.01, card_testing_share=0.02)
