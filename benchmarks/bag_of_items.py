"""Bag-of-items logistic regression: the simple strong baseline of the transfer benchmarks.

A user is the multi-hot vector of the source items a finetuning row holds (the same most recent
``context_len`` items the transferred models read); a multinomial logistic regression
(scikit-learn, L2, C chosen on the validation rows) predicts the target (class or target-domain
item). The fitted weights become a TensorFlow scorer, so the project's own evaluator ranks its
scores on exactly the rows, candidates and negatives the finetuned models get.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import tensorflow as tf

from peterrec.features import ITEM_IDS, LABELS, NUM_RESERVED

C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


def rows(dataset):
    """(multi-hot CSR of the real source items, label array) of a finetuning evaluation dataset."""
    indptr, indices, labels = [0], [], []
    for batch in dataset:
        ids = batch[ITEM_IDS].numpy()
        for row in ids:
            real = np.unique(row[row >= NUM_RESERVED])
            indices.extend(real.tolist())
            indptr.append(len(indices))
        labels.append(batch[LABELS].numpy())
    return indptr, indices, np.concatenate(labels)


def _matrix(parts, num_items):
    indptr, indices, _ = parts
    return sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=(len(indptr) - 1, num_items))


class BagOfItemsScorer:
    """``eval_scores(batch)``: the fitted logistic regression's logits over every target id."""

    def __init__(self, coef, intercept, classes, num_items, num_targets):
        weights = np.zeros((num_items, num_targets), np.float32)
        bias = np.full(num_targets, -1e9, np.float32)  # a target never seen in training ranks last
        if coef.shape[0] == 1:  # binary: sklearn keeps one row, logit(class 1) - logit(class 0)
            coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
        weights[:, classes] = coef.T
        bias[classes] = intercept
        self.weights, self.bias, self.num_items = tf.constant(weights), tf.constant(bias), num_items

    def eval_scores(self, batch):
        ids = tf.cast(batch[ITEM_IDS], tf.int32)
        real = tf.cast(ids >= NUM_RESERVED, tf.float32)
        multi_hot = tf.reduce_max(tf.one_hot(ids, self.num_items) * real[..., None], axis=1)
        return tf.matmul(multi_hot, self.weights) + self.bias


def fit(train_ds, valid_ds, num_items, num_targets, score_valid):
    """The scorer whose C maximises ``score_valid(scorer)`` (a validation metric); returns (scorer, C, table)."""
    from sklearn.linear_model import LogisticRegression

    train, valid = rows(train_ds), rows(valid_ds)
    x_train = _matrix(train, num_items)
    best, table = None, []
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=2000)
        model.fit(x_train, train[2])
        scorer = BagOfItemsScorer(model.coef_, model.intercept_, model.classes_, num_items, num_targets)
        value = score_valid(scorer)
        table.append((c, value))
        if best is None or value > best[2]:
            best = (scorer, c, value)
    return best[0], best[1], table

