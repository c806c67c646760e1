"""Rank metrics against hand-computed values (integer scores with ties)."""

import numpy as np
import pytest
import tensorflow as tf

from peterrec.eval import ranking


def test_ranks_count_ties_against_the_target():
    scores = tf.constant(
        [
            [0, 0, 0, 0, 5, 3, 5, 1],  # target 4 (score 5) ties with id 6 -> rank 1
            [0, 0, 0, 0, 5, 3, 5, 1],  # target 5 (score 3): 4 and 6 higher -> rank 2
            [0, 0, 0, 0, 1, 1, 1, 1],  # target 7: three ties -> rank 3
            [9, 9, 9, 9, 2, 1, 0, 0],  # reserved ids excluded: target 4 alone on top -> rank 0
        ],
        tf.float32,
    )
    ranks = ranking.target_ranks(ranking.exclude_reserved(scores), tf.constant([4, 5, 7, 4]))
    assert ranks.numpy().tolist() == [1, 2, 3, 0]


def test_metric_values_by_hand():
    values = ranking.rank_metrics(tf.constant([0, 1, 4, 5, 9, 10]), ks=(5, 10))
    np.testing.assert_allclose(values["hr@5"].numpy(), [1, 1, 1, 0, 0, 0])
    np.testing.assert_allclose(values["hr@10"].numpy(), [1, 1, 1, 1, 1, 0])
    np.testing.assert_allclose(values["mrr@5"].numpy(), [1, 1 / 2, 1 / 5, 0, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(values["mrr@10"].numpy(), [1, 1 / 2, 1 / 5, 1 / 6, 1 / 10, 0], rtol=1e-6)
    expected_ndcg = [1, 1 / np.log2(3), 1 / np.log2(6), 1 / np.log2(7), 1 / np.log2(11), 0]
    np.testing.assert_allclose(values["ndcg@10"].numpy(), expected_ndcg, rtol=1e-6)


def test_batched_ranks_equal_a_slow_reference():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=(64, 40)).astype("float32")  # many ties
    targets = rng.integers(4, 40, size=64)
    ranks = ranking.target_ranks(ranking.exclude_reserved(tf.constant(scores)), tf.constant(targets)).numpy()
    for row, target, rank in zip(scores, targets, ranks):
        others = [s for j, s in enumerate(row) if j >= 4 and j != target]
        assert rank == sum(s >= row[target] for s in others)


def test_sampled_ranks_on_a_constructed_case():
    # Target 4 scores 10; only id 5 scores higher (11) and id 6 ties (10); all other ids score 0.
    scores = np.zeros((1, 1000), "float32")
    scores[0, 4], scores[0, 5], scores[0, 6] = 10.0, 11.0, 10.0
    ranks = ranking.sampled_ranks(tf.constant(scores), tf.constant([4]), num_negatives=99, seed=(1, 2)).numpy()
    # Negatives are uniform over 995 other real ids; the rank counts draws of 5 or 6.
    draws = tf.random.stateless_uniform([1, 99], seed=(1, 2), minval=4, maxval=999, dtype=tf.int32).numpy()
    negatives = draws + (draws >= 4)
    assert 4 not in negatives
    assert ranks[0] == int(np.sum((negatives == 5) | (negatives == 6)))


def test_sampled_negatives_never_hit_the_target_or_reserved_ids():
    scores = tf.zeros((256, 30))
    targets = tf.constant(np.random.default_rng(0).integers(4, 30, 256))
    draws = tf.random.stateless_uniform([256, 99], seed=(0, 0), minval=4, maxval=29, dtype=tf.int32)
    negatives = draws + tf.cast(draws >= tf.cast(targets, tf.int32)[:, None], tf.int32)
    assert int(tf.reduce_min(negatives)) >= 4 and int(tf.reduce_max(negatives)) <= 29
    assert not np.any(negatives.numpy() == targets.numpy()[:, None])
    # all ties -> every target ranks last among 100 candidates
    assert ranking.sampled_ranks(scores, targets, 99).numpy().tolist() == [99] * 256


@pytest.mark.parametrize("count", [0, 4])
def test_summarise(count):
    out = ranking.summarise({"hr@10": 2.0}, count)
    assert out["hr@10"] == (2.0 / count if count else 2.0)
