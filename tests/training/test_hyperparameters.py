"""Hyperparameter validation mirrors the kmeans:1 container; the string map round-trips."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from training.errors import HyperparameterError
from training.hyperparameters import (
    AUTO_EXTRA_CENTER_FACTOR,
    AUTO_LOCAL_LLOYD_NUM_TRIALS,
    KMeansHyperparameters,
    parse_hyperparameters,
)

REQUIRED = {"k": "10", "feature_dim": "7"}


def test_defaults_match_the_container() -> None:
    hp = parse_hyperparameters(REQUIRED)
    assert hp == KMeansHyperparameters(k=10, feature_dim=7)
    assert (hp.mini_batch_size, hp.epochs, hp.init_method) == (5000, 1, "random")
    assert (hp.extra_center_factor, hp.local_lloyd_num_trials) == (None, None)
    assert (hp.local_lloyd_init_method, hp.local_lloyd_max_iter) == ("kmeans++", 300)
    assert (hp.local_lloyd_tol, hp.half_life_time_size) == (1e-4, 0)
    assert (hp.eval_metrics, hp.force_dense) == (("msd",), True)


def test_auto_evaluates_to_ten() -> None:
    hp = parse_hyperparameters(
        {**REQUIRED, "extra_center_factor": "auto", "local_lloyd_num_trials": "auto"}
    )
    assert hp.center_factor == AUTO_EXTRA_CENTER_FACTOR == 10
    assert hp.num_trials == AUTO_LOCAL_LLOYD_NUM_TRIALS == 10
    explicit = parse_hyperparameters(
        {**REQUIRED, "extra_center_factor": "4", "local_lloyd_num_trials": "3"}
    )
    assert (explicit.center_factor, explicit.num_trials) == (4, 3)


def test_sdk_style_string_map_parses() -> None:
    # What the SageMaker Python SDK sends for KMeans(...) (all strings, force_dense "True").
    raw = {
        "k": "10",
        "feature_dim": "784",
        "mini_batch_size": "500",
        "epochs": "2",
        "init_method": "kmeans++",
        "extra_center_factor": "6",
        "local_lloyd_init_method": "random",
        "local_lloyd_max_iter": "100",
        "local_lloyd_num_trials": "5",
        "local_lloyd_tol": "0.001",
        "half_life_time_size": "1000",
        "eval_metrics": '["msd", "ssd"]',
        "force_dense": "True",
    }
    hp = parse_hyperparameters(raw)
    assert hp.feature_dim == 784
    assert hp.init_method == "kmeans++"
    assert hp.local_lloyd_init_method == "random"
    assert hp.local_lloyd_tol == 0.001
    assert hp.half_life_time_size == 1000
    assert hp.eval_metrics == ("msd", "ssd")


def test_json_values_are_accepted() -> None:
    hp = parse_hyperparameters(
        {
            "k": 3,
            "feature_dim": 2,
            "local_lloyd_tol": 0,
            "eval_metrics": ["ssd"],
            "force_dense": True,
        }
    )
    assert (hp.k, hp.feature_dim, hp.local_lloyd_tol, hp.eval_metrics) == (3, 2, 0.0, ("ssd",))


def test_internal_keys_are_accepted_and_ignored() -> None:
    hp = parse_hyperparameters(
        {**REQUIRED, "_tuning_objective_metric": "test:msd", "_kvstore": "auto", "_num_gpus": 1}
    )
    assert hp == parse_hyperparameters(REQUIRED)


def test_unknown_key_is_named_with_a_close_match() -> None:
    with pytest.raises(HyperparameterError, match="did you mean 'mini_batch_size'") as error:
        parse_hyperparameters({**REQUIRED, "mini_batch_siz": "100"})
    assert error.value.name == "mini_batch_siz"
    assert "'mini_batch_siz'" in str(error.value)


def test_unknown_key_without_close_match_lists_the_known_ones() -> None:
    with pytest.raises(HyperparameterError, match="known: k, feature_dim") as error:
        parse_hyperparameters({**REQUIRED, "zzz": "1"})
    assert error.value.name == "zzz"


@pytest.mark.parametrize("missing", ["k", "feature_dim"])
def test_missing_required_key(missing: str) -> None:
    raw = {name: value for name, value in REQUIRED.items() if name != missing}
    with pytest.raises(HyperparameterError, match="required hyperparameter is missing") as error:
        parse_hyperparameters(raw)
    assert error.value.name == missing


@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        ("k", "0", "an integer >= 1"),
        ("k", "abc", "an integer >= 1"),
        ("k", "1.5", "an integer >= 1"),
        ("k", "010", "an integer >= 1"),
        ("k", True, "an integer >= 1"),
        ("k", 2.0, "an integer >= 1"),
        ("feature_dim", "-3", "an integer >= 1"),
        ("feature_dim", -3, "an integer >= 1"),
        ("mini_batch_size", "0", "an integer >= 1"),
        ("epochs", "", "an integer >= 1"),
        ("local_lloyd_max_iter", " 5", "an integer >= 1"),
        ("init_method", "k-means++", "one of 'random', 'kmeans++'"),
        ("local_lloyd_init_method", "KMEANS++", "one of 'random', 'kmeans++'"),
        ("extra_center_factor", "0", "an integer >= 1 or 'auto'"),
        ("local_lloyd_num_trials", "Auto", "an integer >= 1 or 'auto'"),
        ("local_lloyd_tol", "1.5", "a number in [0, 1]"),
        ("local_lloyd_tol", "-0.1", "a number in [0, 1]"),
        ("local_lloyd_tol", "nan", "a number in [0, 1]"),
        ("local_lloyd_tol", "tiny", "a number in [0, 1]"),
        ("half_life_time_size", "-1", "an integer >= 0"),
        ("eval_metrics", '["mse"]', 'a JSON list of "msd" and/or "ssd"'),
        ("eval_metrics", "msd", 'a JSON list of "msd" and/or "ssd"'),
        ("eval_metrics", "[]", 'a JSON list of "msd" and/or "ssd"'),
        ("eval_metrics", '{"msd": 1}', 'a JSON list of "msd" and/or "ssd"'),
        ("force_dense", "false", "'true' or 'True'"),
        ("force_dense", "TRUE", "'true' or 'True'"),
    ],
)
def test_bad_value_names_key_value_and_allowed_range(
    name: str, value: object, allowed: str
) -> None:
    with pytest.raises(HyperparameterError) as error:
        parse_hyperparameters({**REQUIRED, name: value})
    assert error.value.name == name
    message = str(error.value)
    assert f"'{name}'" in message
    assert repr(value) in message
    assert allowed in message


def test_zero_half_life_and_tolerance_bounds_are_valid() -> None:
    hp = parse_hyperparameters({**REQUIRED, "half_life_time_size": "0", "local_lloyd_tol": "1"})
    assert (hp.half_life_time_size, hp.local_lloyd_tol) == (0, 1.0)


def test_eval_metrics_duplicates_collapse_in_order() -> None:
    hp = parse_hyperparameters({**REQUIRED, "eval_metrics": '["ssd", "msd", "ssd"]'})
    assert hp.eval_metrics == ("ssd", "msd")


@pytest.mark.parametrize("value", ["true", "True", True])
def test_force_dense_accepts_the_sdk_spellings(value: object) -> None:
    assert parse_hyperparameters({**REQUIRED, "force_dense": value}).force_dense is True


def test_direct_construction_is_validated() -> None:
    with pytest.raises(HyperparameterError, match="'epochs'"):
        KMeansHyperparameters(k=2, feature_dim=2, epochs=0)


def test_to_strings_is_the_sagemaker_map() -> None:
    strings = KMeansHyperparameters(k=8, feature_dim=7, eval_metrics=("msd", "ssd")).to_strings()
    assert strings == {
        "k": "8",
        "feature_dim": "7",
        "mini_batch_size": "5000",
        "epochs": "1",
        "init_method": "random",
        "extra_center_factor": "auto",
        "local_lloyd_init_method": "kmeans++",
        "local_lloyd_max_iter": "300",
        "local_lloyd_num_trials": "auto",
        "local_lloyd_tol": "0.0001",
        "half_life_time_size": "0",
        "eval_metrics": '["msd", "ssd"]',
        "force_dense": "true",
    }
    assert json.loads(strings["eval_metrics"]) == ["msd", "ssd"]


positive = st.integers(min_value=1, max_value=10**9)
maybe_auto = st.none() | positive
init = st.sampled_from(["random", "kmeans++"])
metrics = st.lists(st.sampled_from(["msd", "ssd"]), min_size=1, max_size=2, unique=True)


@given(
    k=positive,
    feature_dim=positive,
    mini_batch_size=positive,
    epochs=positive,
    init_method=init,
    extra_center_factor=maybe_auto,
    local_lloyd_init_method=init,
    local_lloyd_max_iter=positive,
    local_lloyd_num_trials=maybe_auto,
    local_lloyd_tol=st.floats(min_value=0.0, max_value=1.0),
    half_life_time_size=st.integers(min_value=0, max_value=10**9),
    eval_metrics=metrics,
)
def test_to_strings_round_trips(
    k: int,
    feature_dim: int,
    mini_batch_size: int,
    epochs: int,
    init_method: str,
    extra_center_factor: int | None,
    local_lloyd_init_method: str,
    local_lloyd_max_iter: int,
    local_lloyd_num_trials: int | None,
    local_lloyd_tol: float,
    half_life_time_size: int,
    eval_metrics: list[str],
) -> None:
    raw: dict[str, object] = {
        "k": k,
        "feature_dim": feature_dim,
        "mini_batch_size": mini_batch_size,
        "epochs": epochs,
        "init_method": init_method,
        "extra_center_factor": extra_center_factor,
        "local_lloyd_init_method": local_lloyd_init_method,
        "local_lloyd_max_iter": local_lloyd_max_iter,
        "local_lloyd_num_trials": local_lloyd_num_trials,
        "local_lloyd_tol": local_lloyd_tol,
        "half_life_time_size": half_life_time_size,
        "eval_metrics": eval_metrics,
    }
    hp = parse_hyperparameters(raw)
    strings = hp.to_strings()
    assert all(isinstance(value, str) for value in strings.values())
    assert parse_hyperparameters(strings) == hp
