"""SageMaker-compatible K-Means: training, streaming, assignment, metrics and log lines."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training import kmeans
from training.errors import DataError, HyperparameterError
from training.hyperparameters import KMeansHyperparameters
from training.kmeans import (
    CONTAINER_DATE_FORMAT,
    CONTAINER_LOG_FORMAT,
    NearestCentroids,
    assign,
    evaluate,
    fit_arrays,
    fit_kmeans,
)

FloatArray = npt.NDArray[np.float64]
CORNERS = np.array([[10.0, 10.0], [10.0, -10.0], [-10.0, 10.0], [-10.0, -10.0]])

# The SageMaker metric definitions for kmeans:1 (reference §1.2).
METRIC_REGEXES = {
    "test:msd": r"#quality_metric: host=\S+, test msd <loss>=(\S+)",
    "test:ssd": r"#quality_metric: host=\S+, test ssd <loss>=(\S+)",
    "train:msd": r"#quality_metric: host=\S+, train msd <loss>=(\S+)",
    "train:progress": r"#progress_metric: host=\S+, completed (\S+) %",
    "train:throughput": r"#throughput_metric: host=\S+, train throughput=(\S+) records/second",
}


def corner_blobs(per_blob: int = 200, seed: int = 0) -> FloatArray:
    """Four well-separated 2-d blobs, rows interleaved at random."""
    rng = np.random.default_rng(seed)
    rows = np.repeat(CORNERS, per_blob, axis=0) + rng.normal(0.0, 0.5, (4 * per_blob, 2))
    return rows[rng.permutation(len(rows))]


def hyperparameters(**overrides: object) -> KMeansHyperparameters:
    values: dict[str, object] = {"k": 4, "feature_dim": 2, "mini_batch_size": 100}
    values.update(overrides)
    return KMeansHyperparameters(**values)  # type: ignore[arg-type]


def pieces(data: FloatArray, sizes: list[int]) -> kmeans.BatchSource:
    """A batch source yielding ``data`` in consecutive pieces of the given sizes (then the rest)."""

    def source() -> Iterator[FloatArray]:
        start = 0
        for size in sizes:
            yield data[start : start + size]
            start += size
        if start < len(data):
            yield data[start:]

    return source


def nearest_corner_error(centroids: npt.NDArray[np.float32]) -> float:
    """Largest distance from a true blob centre to its closest centroid."""
    gaps = np.linalg.norm(CORNERS[:, None, :] - centroids[None, :, :].astype(np.float64), axis=2)
    return float(gaps.min(axis=1).max())


@pytest.mark.parametrize("refine_passes", [0, 1])
@pytest.mark.parametrize("init_method", ["random", "kmeans++"])
def test_separated_blobs_are_recovered(refine_passes: int, init_method: str) -> None:
    data = corner_blobs()
    result = fit_arrays(
        data, hyperparameters(init_method=init_method), seed=1, refine_passes=refine_passes
    )
    assert result.centroids.dtype == np.float32
    assert result.centroids.shape == (4, 2)
    assert nearest_corner_error(result.centroids) < 0.2
    assert result.cluster_weights.shape == (4,)
    assert result.cluster_weights.sum() == pytest.approx(len(data))
    assert np.allclose(result.cluster_weights, 200, atol=2)


def test_random_shrink_seeding_recovers_blobs() -> None:
    result = fit_arrays(
        corner_blobs(), hyperparameters(local_lloyd_init_method="random"), seed=3, refine_passes=0
    )
    assert nearest_corner_error(result.centroids) < 0.5


def test_same_seed_reproduces_and_other_seeds_may_differ() -> None:
    data = np.random.default_rng(5).uniform(-1.0, 1.0, (600, 3))
    hp = hyperparameters(k=6, feature_dim=3)
    first = fit_arrays(data, hp, seed=7, test=data[:100])
    again = fit_arrays(data, hp, seed=7, test=data[:100])
    assert np.array_equal(first.centroids, again.centroids)
    assert first.metrics == again.metrics
    assert np.array_equal(first.cluster_weights, again.cluster_weights)
    others = [fit_arrays(data, hp, seed=seed).centroids for seed in range(8, 12)]
    assert any(not np.array_equal(first.centroids, other) for other in others)


def test_streaming_gives_the_same_model_for_any_batch_split() -> None:
    # Mini-batches are regrouped to mini_batch_size, so with refinement off the split of the
    # source into arrays cannot change what the algorithm sees.
    data = corner_blobs()
    hp = hyperparameters()
    whole = fit_kmeans(pieces(data, []), hp, seed=2, refine_passes=0)
    ragged = fit_kmeans(pieces(data, [1, 7, 333, 0, 64, 99]), hp, seed=2, refine_passes=0)
    single_rows = fit_kmeans(pieces(data, [1] * len(data)), hp, seed=2, refine_passes=0)
    assert np.allclose(whole.centroids, ragged.centroids, atol=1e-5)
    assert np.allclose(whole.centroids, single_rows.centroids, atol=1e-5)
    refined = fit_kmeans(pieces(data, [1, 7, 333, 64, 99]), hp, seed=2)
    assert refined.centroids.shape == (4, 2)
    assert nearest_corner_error(refined.centroids) < 0.2


def test_streaming_reads_each_pass_and_reports_progress() -> None:
    data = corner_blobs(per_blob=50)
    calls = 0

    def source() -> Iterator[FloatArray]:
        nonlocal calls
        calls += 1
        return iter([data[:123], data[123:]])

    seen: list[int] = []
    fit_kmeans(source, hyperparameters(epochs=2), seed=0, progress=seen.append, refine_passes=1)
    assert calls == 3  # two epochs, one refinement pass
    assert seen == sorted(seen)
    assert seen[-1] == 3 * len(data)


def test_running_mean_update_is_exact_without_decay() -> None:
    # One centre, no decay: the count-weighted running mean must equal the plain mean.
    data = np.random.default_rng(4).normal(3.0, 2.0, (1_000, 2))
    hp = hyperparameters(k=1, extra_center_factor=1, mini_batch_size=37)
    result = fit_kmeans(pieces(data, []), hp, seed=0, refine_passes=0)
    assert np.allclose(result.centroids[0], data.mean(axis=0), rtol=1e-6)
    assert result.train_msd == pytest.approx(0.0)


def test_half_life_decay_follows_recent_rows() -> None:
    # 500 rows at 0 then 500 at 10: without decay the centre is the mean (5); with a short
    # half-life the early rows have all but vanished from its weight.
    data = np.concatenate([np.zeros((500, 1)), np.full((500, 1), 10.0)])
    plain = hyperparameters(k=1, feature_dim=1, extra_center_factor=1, mini_batch_size=50)
    decayed = hyperparameters(
        k=1, feature_dim=1, extra_center_factor=1, mini_batch_size=50, half_life_time_size=50
    )
    assert fit_kmeans(pieces(data, []), plain, seed=0, refine_passes=0).centroids[0, 0] == (
        pytest.approx(5.0)
    )
    recent = fit_kmeans(pieces(data, []), decayed, seed=0, refine_passes=0).centroids[0, 0]
    assert recent > 9.99


def test_coincident_rows_leave_empty_centres_and_still_give_k_distinct_centroids() -> None:
    # 3 distinct points repeated: most of the K = 30 seeds coincide, ties send rows to the lowest
    # index, so most centres stay empty (weight 0); the shrink must still find the 3 points.
    points = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    data = np.tile(points, (40, 1))
    for refine_passes in (0, 1):
        result = fit_arrays(data, hyperparameters(k=3), seed=0, refine_passes=refine_passes)
        found = sorted(map(tuple, result.centroids.astype(np.float64).tolist()))
        assert found == sorted(map(tuple, points.tolist()))
        assert np.array_equal(np.sort(result.cluster_weights), [40.0, 40.0, 40.0])


def test_lloyd_keeps_the_centre_of_an_empty_cluster() -> None:
    points = np.array([[0.0], [1.0], [10.0], [11.0]])
    start = np.array([[0.5], [100.0], [10.5]])
    centres, loss, labels = kmeans._lloyd(points, np.ones(4), start, max_iter=10, tol=0.0)
    assert centres[1, 0] == 100.0
    assert 1 not in labels
    assert np.allclose(centres[[0, 2], 0], [0.5, 10.5])
    assert loss == pytest.approx(0.25)


def test_lloyd_weights_pull_the_centre() -> None:
    points = np.array([[0.0], [10.0]])
    centres, _, _ = kmeans._lloyd(points, np.array([3.0, 1.0]), np.array([[4.0]]), 10, 0.0)
    assert centres[0, 0] == pytest.approx(2.5)


def test_small_first_batch_reads_more_and_caps_k(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="training.kmeans")
    data = corner_blobs(per_blob=5)  # 20 rows < K = 40 and < mini_batch_size
    result = fit_arrays(data, hyperparameters(mini_batch_size=5000), seed=0)
    assert result.centroids.shape == (4, 2)
    assert "Effective batch size used to initialize is 20" in caplog.text
    assert "using 20 centers instead of 40" in caplog.text
    # mini_batch_size below K: the seeding reads several mini-batches.
    streamed = fit_kmeans(pieces(corner_blobs(), []), hyperparameters(mini_batch_size=7), seed=0)
    assert nearest_corner_error(streamed.centroids) < 0.2


def test_fewer_rows_than_k_is_a_data_error() -> None:
    with pytest.raises(DataError, match="2 rows, fewer than k=4"):
        fit_arrays(corner_blobs()[:2], hyperparameters(), seed=0)


def test_bad_training_data_is_named() -> None:
    hp = hyperparameters()
    with pytest.raises(DataError, match="no training rows"):
        fit_kmeans(lambda: iter([]), hp, seed=0)
    with pytest.raises(DataError, match="no training rows"):
        fit_arrays(np.empty((0, 2)), hp, seed=0)
    with pytest.raises(DataError, match="3 columns, feature_dim is 2"):
        fit_arrays(np.zeros((10, 3)), hp, seed=0)
    with pytest.raises(DataError, match="must be 2-d"):
        fit_arrays(np.zeros(10), hp, seed=0)
    data = corner_blobs()
    data[150, 1] = np.nan
    with pytest.raises(DataError, match="row 151: training data holds a NaN"):
        fit_kmeans(pieces(data, [100, 100]), hp, seed=0)
    data[150, 1] = np.inf
    with pytest.raises(DataError, match="row 151"):
        fit_arrays(data, hp, seed=0)


def test_assign_distances_are_euclidean_like_brute_force() -> None:
    rng = np.random.default_rng(9)
    rows = rng.normal(0.0, 3.0, (500, 5))
    centroids = rng.normal(0.0, 3.0, (7, 5)).astype(np.float32)
    clusters, distances = assign(rows, centroids)
    gaps = np.linalg.norm(rows[:, None, :] - centroids.astype(np.float64)[None], axis=2)
    assert clusters.dtype == np.int64
    assert distances.dtype == np.float64
    assert np.array_equal(clusters, gaps.argmin(axis=1))
    assert np.allclose(distances, gaps.min(axis=1), rtol=1e-9, atol=1e-9)
    one_cluster, one_distance = assign(rows[3], centroids)
    assert one_cluster.tolist() == [clusters[3]]
    assert one_distance[0] == pytest.approx(distances[3])


def test_assign_large_inputs_are_chunked_consistently() -> None:
    rng = np.random.default_rng(10)
    rows = rng.normal(size=(kmeans.ASSIGN_CHUNK_ROWS * 2 + 5, 3))
    centroids = rng.normal(size=(4, 3))
    clusters, distances = assign(rows, centroids)
    head_clusters, head_distances = assign(rows[-5:], centroids)
    assert np.array_equal(clusters[-5:], head_clusters)
    assert np.array_equal(distances[-5:], head_distances)


def test_a_row_assigns_the_same_bits_in_any_batch() -> None:
    # Whatever the batch's size and the row's place in it (BLAS rounds a row by its place in
    # the product's tiles): what makes /score/batch and score-file agree exactly.
    rng = np.random.default_rng(11)
    rows = rng.normal(0.0, 3.0, (41, 13))
    centroids = rng.normal(0.0, 3.0, (10, 13))
    nearest = kmeans.NearestCentroids(centroids)
    clusters, distances = nearest.assign(rows)
    for size in (1, 2, 3, 5, 7, 8, 9, 17):
        for start in (0, 1, 40 - size):
            part_clusters, part_distances = nearest.assign(rows[start : start + size])
            assert np.array_equal(part_clusters, clusters[start : start + size])
            assert part_distances.tobytes() == distances[start : start + size].tobytes()


def test_row_products_sum_each_entry_in_column_order() -> None:
    rng = np.random.default_rng(12)
    rows, matrix = rng.normal(size=(9, 13)), rng.normal(size=(13, 10))
    expected = rows[:, :1] * matrix[0]
    for j in range(1, 13):
        expected = expected + rows[:, j : j + 1] * matrix[j]
    assert kmeans.row_products(rows, matrix).tobytes() == expected.tobytes()


def test_assign_ties_go_to_the_lowest_index() -> None:
    centroids = np.array([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    clusters, distances = assign(np.array([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0]]), centroids)
    assert clusters.tolist() == [0, 0, 1]
    assert distances.tolist() == [1.0, 0.0, 0.0]


def test_assign_rejects_mismatched_shapes() -> None:
    with pytest.raises(DataError, match="cannot assign rows of shape"):
        assign(np.zeros((2, 3)), np.zeros((4, 2)))


def test_test_metrics_are_mean_and_sum_of_squared_distances() -> None:
    data = corner_blobs()
    test = corner_blobs(per_blob=30, seed=8)
    result = fit_arrays(data, hyperparameters(eval_metrics=("msd", "ssd")), seed=0, test=test)
    gaps = np.linalg.norm(test[:, None, :] - result.centroids.astype(np.float64)[None], axis=2)
    squared = gaps.min(axis=1) ** 2
    assert set(result.metrics) == {"train:msd", "test:msd", "test:ssd"}
    assert result.metrics["test:msd"] == pytest.approx(squared.mean(), rel=1e-9)
    assert result.metrics["test:ssd"] == pytest.approx(squared.sum(), rel=1e-9)
    assert result.metrics["train:msd"] == result.train_msd
    only_ssd = evaluate(pieces(test, [7]), result.centroids, ["ssd"])
    assert only_ssd == {"test:ssd": pytest.approx(squared.sum(), rel=1e-9)}


def test_evaluate_rejects_unknown_metrics_and_empty_data() -> None:
    with pytest.raises(HyperparameterError, match="'mse' is not one of msd, ssd"):
        evaluate(pieces(CORNERS, []), CORNERS, ["mse"])
    with pytest.raises(DataError, match="no test rows"):
        evaluate(lambda: iter([]), CORNERS)


def test_train_msd_is_the_shrink_loss_whatever_the_refinement() -> None:
    data = corner_blobs()
    hp = hyperparameters()
    assert fit_arrays(data, hp, seed=4, refine_passes=0).train_msd == (
        fit_arrays(data, hp, seed=4, refine_passes=2).train_msd
    )


def test_log_lines_parse_with_the_sagemaker_metric_regexes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="training.kmeans")
    hp = hyperparameters(epochs=2, eval_metrics=("msd", "ssd"), local_lloyd_num_trials=3)
    result = fit_arrays(corner_blobs(), hp, seed=0, test=corner_blobs(per_blob=20, seed=1))
    formatter = logging.Formatter(CONTAINER_LOG_FORMAT, CONTAINER_DATE_FORMAT)
    lines = [formatter.format(record) for record in caplog.records]
    assert all(re.match(r"\[\d\d/\d\d/\d{4} \d\d:\d\d:\d\d INFO \d+\] ", line) for line in lines)
    found = {
        name: [float(match) for line in lines for match in re.findall(regex, line)]
        for name, regex in METRIC_REGEXES.items()
    }
    assert found["train:msd"] == [result.metrics["train:msd"]]
    assert found["test:msd"] == [result.metrics["test:msd"]]
    assert found["test:ssd"] == [result.metrics["test:ssd"]]
    assert found["train:progress"] == [50.0, 100.0]
    assert len(found["train:throughput"]) == 2
    assert all(value > 0 for value in found["train:throughput"])
    attempts = [
        float(value)
        for line in lines
        for value in re.findall(
            r"local kmeans attempt #\d+\. Current mean square distance (\S+)", line
        )
    ]
    assert len(attempts) == 3
    assert min(attempts) == pytest.approx(result.train_msd, abs=1e-6)
    assert "shrinking 40 centers into 4" in caplog.text
    assert "'extra_center_factor' was set to 'auto', evaluated to 10." in caplog.text


def test_without_test_data_no_test_metric_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="training.kmeans")
    result = fit_arrays(corner_blobs(), hyperparameters(extra_center_factor=2), seed=0)
    assert set(result.metrics) == {"train:msd"}
    assert "Test data is not provided." in caplog.text
    assert "test msd" not in caplog.text
    assert "evaluated to" not in caplog.text


def test_reservoir_keeps_a_bounded_uniform_sample() -> None:
    reservoir = kmeans._Reservoir(100, 1, np.random.default_rng(0))
    reservoir.add(np.arange(60.0)[:, None])
    assert np.array_equal(reservoir.sample()[:, 0], np.arange(60.0))
    for start in range(60, 20_000, 500):
        reservoir.add(np.arange(float(start), float(min(start + 500, 20_000)))[:, None])
    sample = reservoir.sample()[:, 0]
    assert len(sample) == 100
    assert len(np.unique(sample)) == 100
    # Uniform over 0..19,999: the mean of 100 draws lies within ~4 standard errors of 10,000.
    assert abs(sample.mean() - 10_000) < 4 * 5_774 / 10


@settings(max_examples=50, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=30), max_size=12),
    size=st.integers(min_value=1, max_value=25),
)
def test_rebatch_regroups_rows_in_order(sizes: list[int], size: int) -> None:
    data = np.arange(float(sum(sizes)) * 2).reshape(-1, 2)
    batches = [batch.copy() for batch in kmeans._rebatch(pieces(data, sizes)(), size)]
    assert all(len(batch) == size for batch in batches[:-1])
    assert all(0 < len(batch) <= size for batch in batches)
    joined = np.concatenate(batches) if batches else np.empty((0, 2))
    assert np.array_equal(joined, data)


def test_one_feature_many_centres() -> None:
    # K = 30 centres on 1 column: the layout that folds ||c||² into the matmul, on tiny batches.
    rng = np.random.default_rng(12)
    data = (rng.integers(0, 3, 600) * 10.0 + rng.normal(0.0, 0.3, 600))[:, None]
    hp = hyperparameters(k=3, feature_dim=1, mini_batch_size=7)
    centroids = np.sort(fit_arrays(data, hp, seed=0).centroids[:, 0])
    assert np.allclose(centroids, [0.0, 10.0, 20.0], atol=0.1)


def test_nearest_centroids_single_row_matches_the_batch_path() -> None:
    rng = np.random.default_rng(5)
    centroids = rng.normal(size=(7, 4))
    rows = rng.normal(size=(50, 4))
    index = NearestCentroids(centroids)
    batch_clusters, batch_distances = index.assign(rows)
    for i, row in enumerate(rows):
        cluster, distance = index.assign(row)
        assert cluster.tolist() == [batch_clusters[i]]
        assert distance[0] == pytest.approx(batch_distances[i], rel=1e-12)
    np.testing.assert_array_equal(assign(rows, centroids)[0], batch_clusters)


def test_nearest_centroids_single_row_tie_goes_to_lowest_index() -> None:
    index = NearestCentroids(np.array([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]]))
    assert index.assign([0.0, 0.0])[0].tolist() == [0]
    assert index.assign([[0.0, 0.0], [0.0, 0.0]])[0].tolist() == [0, 0]
    clusters, distances = index.assign(np.empty((0, 2)))
    assert clusters.shape == distances.shape == (0,)
