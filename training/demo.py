"""Synthetic card transactions with labelled anomalies, for demos, tests and benchmarks.

Each transaction code has its own amount, time-of-day and distance pattern; a labelled
share of anomalies is injected, of four kinds:

- ``amount_spike``: an amount far above the code's usual range;
- ``travel``: a card used thousands of kilometres from home at night;
- ``velocity``: a burst of transactions at risky merchants;
- ``card_testing``: a tight group of look-alike e-commerce micro-payments (the kind of
  fraud that forms its own small cluster and must be caught as a rare pattern).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.csv as pacsv

# code -> (share, channel, log-amount mean, log-amount sigma, typical km from home)
TRAN_CODES: dict[str, tuple[float, str, float, float, float]] = {
    "01": (0.45, "pos", np.log(40.0), 0.8, 5.0),  # card-present purchase
    "07": (0.25, "pos", np.log(12.0), 0.5, 3.0),  # contactless
    "05": (0.20, "ecom", np.log(60.0), 1.0, 20.0),  # e-commerce
    "12": (0.07, "atm", np.log(80.0), 0.6, 4.0),  # cash withdrawal
    "20": (0.03, "pos", np.log(35.0), 0.8, 6.0),  # refund (negative amount)
}
ANOMALY_KINDS = ("amount_spike", "travel", "velocity", "card_testing")
LABEL_COLUMN = "is_fraud"
START = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class DemoConfig:
    """Size and make-up of a synthetic data set."""

    rows: int = 50_000
    seed: int = 0
    anomaly_share: float = 0.02
    card_testing_share: float = 0.003
    days: int = 30

    def __post_init__(self) -> None:
        if self.rows < 1:
            raise ValueError(f"rows must be >= 1, got {self.rows}")
        if not 0.0 <= self.card_testing_share <= self.anomaly_share < 1.0:
            raise ValueError("need 0 <= card_testing_share <= anomaly_share < 1")


def generate(config: DemoConfig) -> pa.Table:
    """Generate ``config.rows`` transactions as an Arrow table (label in ``is_fraud``)."""
    rng = np.random.default_rng(config.seed)
    n = config.rows
    codes = list(TRAN_CODES)
    shares = np.array([TRAN_CODES[c][0] for c in codes])
    code_idx = rng.choice(len(codes), size=n, p=shares / shares.sum())
    mu = np.array([TRAN_CODES[c][2] for c in codes])[code_idx]
    sigma = np.array([TRAN_CODES[c][3] for c in codes])[code_idx]
    km_typ = np.array([TRAN_CODES[c][4] for c in codes])[code_idx]
    channel = np.array([TRAN_CODES[c][1] for c in codes], dtype=object)[code_idx]

    amount = np.exp(rng.normal(mu, sigma))
    is_atm = code_idx == codes.index("12")
    amount[is_atm] = np.clip(np.round(amount[is_atm] / 20.0), 1, 20) * 20.0
    is_refund = code_idx == codes.index("20")
    amount[is_refund] *= -1.0
    # Daytime for card-present use, flatter with an evening peak for e-commerce.
    hour = np.clip(np.round(rng.normal(14.0, 3.5, n)), 0, 23)
    is_ecom = channel == "ecom"
    hour[is_ecom] = np.round(rng.normal(20.0, 4.0, int(is_ecom.sum()))) % 24
    km = np.exp(rng.normal(np.log(km_typ), 0.8))
    tx_24h = rng.poisson(2.0, n) + 1.0
    merchant_risk = rng.beta(2.0, 20.0, n)

    kind = np.full(n, "", dtype=object)
    n_anom = round(n * config.anomaly_share)
    n_ring = min(round(n * config.card_testing_share), n_anom)
    chosen = rng.choice(n, size=n_anom, replace=False)
    ring, rest = chosen[:n_ring], chosen[n_ring:]
    kind[ring] = "card_testing"
    kind[rest] = rng.choice(np.array(ANOMALY_KINDS[:3], dtype=object), size=rest.size)

    spike = kind == "amount_spike"
    amount[spike] *= rng.uniform(20.0, 50.0, int(spike.sum()))
    travel = kind == "travel"
    km[travel] = rng.uniform(2_000.0, 9_000.0, int(travel.sum()))
    hour[travel] = rng.integers(0, 5, int(travel.sum()))
    velocity = kind == "velocity"
    tx_24h[velocity] = rng.integers(25, 60, int(velocity.sum()))
    merchant_risk[velocity] = rng.beta(8.0, 4.0, int(velocity.sum()))
    ring_mask = kind == "card_testing"
    m = int(ring_mask.sum())
    code_idx[ring_mask] = codes.index("05")
    channel[ring_mask] = "ecom"
    amount[ring_mask] = rng.normal(1.0, 0.05, m)
    hour[ring_mask] = rng.integers(3, 5, m)
    km[ring_mask] = rng.normal(7_500.0, 100.0, m)
    tx_24h[ring_mask] = np.round(rng.normal(40.0, 3.0, m))
    merchant_risk[ring_mask] = rng.normal(0.85, 0.02, m)

    day = rng.integers(0, config.days, n)
    seconds = day * 86_400 + hour.astype(np.int64) * 3_600 + rng.integers(0, 3_600, n)
    order = np.argsort(seconds, kind="stable")
    base = np.datetime64(START.replace(tzinfo=None), "s")
    stamps = np.datetime_as_string(base + seconds[order].astype("timedelta64[s]")) + "Z"
    return pa.table(
        {
            "transaction_id": [f"tx-{i:09d}" for i in range(1, n + 1)],
            "timestamp": stamps.astype(object),
            "amount": np.round(amount[order], 2),
            "tran_code": np.array(codes, dtype=object)[code_idx[order]],
            "channel": channel[order],
            "hour": hour[order].astype(np.int64),
            "km_from_home": np.round(km[order], 1),
            "tx_last_24h": tx_24h[order].astype(np.int64),
            "merchant_risk": np.round(np.clip(merchant_risk[order], 0.0, 1.0), 4),
            LABEL_COLUMN: (kind[order] != "").astype(np.int8),
        }
    )


def write_csv(table: pa.Table, path: Path) -> None:
    """Write ``table`` as CSV with a header row, atomically (a temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pacsv.write_csv(table, tmp, pacsv.WriteOptions(quoting_style="needed"))
    tmp.replace(path)


def label_counts(table: pa.Table) -> npt.NDArray[np.int64]:
    """Number of normal and anomalous rows, as ``[normal, anomalous]``."""
    labels = table.column(LABEL_COLUMN).to_numpy()
    return np.bincount(labels.astype(np.int64), minlength=2)


# The feature spec the demo model is trained with (also shipped as examples/features.json).
DEMO_FEATURES: dict[str, list[dict[str, str]]] = {
    "fields": [
        {"name": "amount", "type": "numeric", "transform": "log1p", "scale": "robust"},
        {"name": "tran_code", "type": "categorical"},
        {"name": "channel", "type": "categorical"},
        {"name": "hour", "type": "numeric", "scale": "standard"},
        {"name": "km_from_home", "type": "numeric", "transform": "log1p", "scale": "standard"},
        {"name": "tx_last_24h", "type": "numeric", "transform": "log1p", "scale": "standard"},
        {"name": "merchant_risk", "type": "numeric", "scale": "standard"},
    ]
}
