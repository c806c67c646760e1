"""The PeterRec transfer head against hand-built values: LambdaFM negatives, the default loss with LambdaFM,
the target-table L2 term, and the user vector of causal and non-causal backbones."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from peterrec import finetuning
from peterrec.backbones.nextitnet import NextItNetBackbone
from peterrec.features import MASK_ID, NUM_RESERVED, PAD_ID, SEP_ID
from peterrec.tasks.transfer import TransferTask, lambdafm_probabilities

COUNTS = np.array([0, 0, 0, 0, 5, 50, 1, 20, 3, 8])  # target ids 4..9


def _task(causal=True, **kwargs):
    keras.utils.set_random_seed(0)
    backbone = NextItNetBackbone(vocabulary_size=20, embedding_dim=8, dilations=[1, 2], causal=causal)
    return TransferTask(backbone, num_targets=len(COUNTS), target_counts=COUNTS, negative_seed=1, **kwargs)


def test_lambdafm_negatives_follow_the_popularity_rank_distribution():
    task = _task(sampler="lambdafm", loss="bpr")
    draws = task._negatives(tf.fill([60000], 4)).numpy()
    frequencies = np.bincount(draws, minlength=len(COUNTS)) / len(draws)
    expected = lambdafm_probabilities(COUNTS, rho=0.3)
    assert np.all(frequencies[:NUM_RESERVED] == 0)
    np.testing.assert_allclose(frequencies, expected, atol=0.006)  # sd of a frequency <= 0.002
    assert frequencies[5] > frequencies[7] > frequencies[9] > frequencies[4] > frequencies[8] > frequencies[6]  # by rank
    uniform = _task(sampler="uniform")._negatives(tf.fill([60000], 4)).numpy()  # the other sampler: uniform over ids 5..9
    np.testing.assert_allclose(np.bincount(uniform, minlength=len(COUNTS))[5:] / 60000, 1 / 5, atol=0.01)


def test_the_loss_defaults_to_bpr_with_lambdafm_and_the_task_computes_bpr():
    assert finetuning.FinetuneConfig(pretrained="p", sampler="lambdafm").resolved_loss() == "bpr"
    assert finetuning.FinetuneConfig(pretrained="p").resolved_loss() == "bce"
    assert finetuning.FinetuneConfig(pretrained="p", sampler="lambdafm", loss="bce").resolved_loss() == "bce"
    task = _task(sampler="lambdafm", loss=finetuning.FinetuneConfig(pretrained="p", sampler="lambdafm").resolved_loss())
    batch = {"item_ids": tf.constant([[5, 6, 7, 0], [8, 9, 0, 0]]), "lengths": tf.constant([3, 2]), "labels": tf.constant([4, 6])}
    negatives = tf.constant([7, 5])
    task._negatives = lambda positives: negatives
    user = task.user_vector(batch["item_ids"], batch["lengths"]).numpy()
    table = task.target_embedding.embeddings.numpy()
    s_pos = np.sum(user * table[[4, 6]], axis=1)
    s_neg = np.sum(user * table[[7, 5]], axis=1)
    bpr = np.sum(np.log1p(np.exp(-(s_pos - s_neg))))  # -log sigmoid(s+ - s-)
    assert float(task.loss_sum(batch, training=False)) == pytest.approx(bpr, rel=1e-5)


def test_the_target_table_l2_term():
    task = _task(l2=0.02)
    table = task.target_embedding.embeddings.numpy()
    assert float(tf.add_n(task.losses)) == pytest.approx(0.02 * np.sum(table**2), rel=1e-5)
    assert _task(l2=0.0).losses == []


@pytest.mark.parametrize("causal", [True, False])
def test_the_user_vector_is_the_separator_output_or_the_sum_of_both(causal):
    task = _task(causal=causal)
    items, lengths = np.array([[5, 6, 7, 0, 0], [8, 9, 0, 0, 0]]), np.array([3, 2])
    user = task.user_vector(tf.constant(items), tf.constant(lengths)).numpy()
    if causal:  # [items, SEP]: the output at SEP
        ids = np.array([[5, 6, 7, SEP_ID, 0, 0], [8, 9, SEP_ID, 0, 0, 0]])
        hidden = task.backbone(tf.constant(ids)).numpy()
        np.testing.assert_allclose(user, hidden[[0, 1], [3, 2]], rtol=1e-5, atol=1e-6)
    else:  # [MASK, items, MASK]: the sum of the outputs at both separators
        ids = np.array([[MASK_ID, 5, 6, 7, MASK_ID, 0, 0], [MASK_ID, 8, 9, MASK_ID, 0, 0, 0]])
        hidden = task.backbone(tf.constant(ids)).numpy()
        np.testing.assert_allclose(user, hidden[:, 0] + hidden[[0, 1], [4, 3]], rtol=1e-5, atol=1e-6)
        assert not np.allclose(user, hidden[[0, 1], [4, 3]], atol=1e-3) and not np.allclose(user, hidden[:, 0], atol=1e-3)
    assert PAD_ID == 0
