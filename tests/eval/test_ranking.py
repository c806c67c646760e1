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
    # Reserved ids and the target score 1, every other id 0; ties count against the target, so a negative
    # drawn from a reserved id or from the target itself would raise its rank above 0.
    rng = np.random.default_rng(0)
    targets = rng.integers(4, 30, 512)
    scores = np.zeros((512, 30), "float32")
    scores[:, :4] = 1.0
    scores[np.arange(512), targets] = 1.0
    ranks = ranking.sampled_ranks(tf.constant(scores), tf.constant(targets), 99, seed=(0, 0)).numpy()
    assert ranks.tolist() == [0] * 512
    # the top real id (V - 1) is drawn too (an off-by-one upper bound would never draw it)
    scores = np.zeros((512, 30), "float32")
    scores[:, 29] = 2.0
    scores[:, 4] = 1.0
    ranks = ranking.sampled_ranks(tf.constant(scores), tf.constant([4] * 512), 99, seed=(0, 0)).numpy()
    assert ranks.mean() == pytest.approx(99 / 25, rel=0.1)  # id 29 is one of the 25 real ids other than the target
    # all ties -> every target ranks last among 100 candidates
    targets = tf.constant(rng.integers(4, 30, 256))
    assert ranking.sampled_ranks(tf.zeros((256, 30)), targets, 99).numpy().tolist() == [99] * 256


def test_sampled_negatives_are_uniform_over_the_other_real_ids():
    # Row r (one per real id k != target) scores only id k above the target: its rank counts the draws of k.
    vocab, target, replicas = 20, 9, 300
    others = [k for k in range(4, vocab) if k != target]
    scores = np.zeros((len(others) * replicas, vocab), "float32")
    scores[:, target] = 0.5
    for i, k in enumerate(others):
        scores[i * replicas:(i + 1) * replicas, k] = 1.0
    ranks = ranking.sampled_ranks(tf.constant(scores), tf.constant([target] * len(scores)), 99, seed=(3, 4)).numpy()
    per_id = ranks.reshape(len(others), replicas).mean(axis=1)
    np.testing.assert_allclose(per_id, 99 / len(others), rtol=0.12)  # ~6.6 draws of each id per row; sd of a mean ~0.14


@pytest.mark.parametrize("count", [0, 4])
def test_summarise(count):
    out = ranking.summarise({"hr@10": 2.0}, count)
    assert out["hr@10"] == (2.0 / count if count else 2.0)
