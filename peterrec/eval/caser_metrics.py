"""Caser's metric set: Prec@k, Recall@k (k = 1, 5, 10) and MAP, as caser_pytorch's ``evaluation.py`` codes them.

For every evaluation user (``/work/shared/docs/other_models.md`` §1.5):

1. score every item from the user's most recent ``L`` context items;
2. sort by descending score and **remove** every item of the user's history
   (the original removes the items of the user's training rows; here: every
   context item before the held-out ones, which is the same set for the
   original's protocol, whose training file holds everything before the test
   items);
3. targets = the *set* of the user's held-out items; a target that was removed
   (a repeat of a history item) or that cannot be ranked still counts in
   ``|targets|``;
4. ``Prec@k = |top-k ∩ targets| / len(top-k)``, ``Recall@k = |top-k ∩ targets| / |targets|``;
5. ``AP = sum over hits (hits so far / position) / |targets|`` over the **full**
   ranking; MAP is the mean over users; every metric is an unweighted mean
   over users.

Two choices of peterrec (docs/fidelity.md, Caser section): reserved ids
(padding, OOV, mask, separator) are never ranked — the original ranks its
padding id 0 — and equal scores are ordered by ascending id (a stable sort;
the original's numpy quicksort leaves the order of ties unspecified).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from peterrec.data.caser_dataset import HISTORY, HOLDOUT, USER_INDEX
from peterrec.features import ITEM_IDS, LENGTHS, NUM_RESERVED, PAD_ID

KS = (1, 5, 10)


def metric_names(ks=KS):
    return [f"prec@{k}" for k in ks] + [f"recall@{k}" for k in ks] + ["map"]


def user_metrics(scores, holdout, history, ks=KS, num_reserved=NUM_RESERVED):
    """Per-user metric values ``{name: float64 [B]}``.

    Args:
        scores: ``[B, V]`` scores of every id.
        holdout: int ``[B, M]`` held-out items per user, padded with ``PAD_ID``
            (duplicates count once).
        history: int ``[B, H]`` items removed from each user's ranking, padded
            with ``PAD_ID``.
        ks: cut-offs of Prec@k and Recall@k.
        num_reserved: ids below this are never ranked.
    """
    scores = np.asarray(scores)
    holdout = np.asarray(holdout, dtype=np.int64).reshape(len(scores), -1)
    history = np.asarray(history, dtype=np.int64).reshape(len(scores), -1)
    batch, vocab = scores.shape
    rows = np.arange(batch)[:, None]
    ranked = np.ones((batch, vocab), dtype=bool)
    ranked[:, :num_reserved] = False
    removed = (history != PAD_ID) & (history >= 0) & (history < vocab)  # PAD_ID pads the history rows
    ranked[np.broadcast_to(rows, history.shape)[removed], history[removed]] = False
    order = np.argsort(-np.where(ranked, scores, -np.inf), axis=1, kind="stable")  # removed items last
    position = np.empty_like(order)
    position[rows, order] = np.arange(vocab)[None, :]
    num_ranked = ranked.sum(axis=1)

    targets = np.sort(holdout, axis=1)
    first = np.ones_like(targets, dtype=bool)
    first[:, 1:] = targets[:, 1:] != targets[:, :-1]
    is_target = first & (targets != PAD_ID)
    num_targets = np.maximum(is_target.sum(axis=1), 1)
    in_range = (targets >= 0) & (targets < vocab)
    safe = np.where(in_range, targets, 0)
    hit = is_target & in_range & ranked[rows, safe]
    hit_rank = np.sort(np.where(hit, position[rows, safe], np.iinfo(np.int64).max), axis=1)
    is_hit = hit_rank < vocab
    hits_so_far = np.cumsum(is_hit, axis=1)
    ap = np.where(is_hit, hits_so_far / (hit_rank.clip(max=vocab) + 1.0), 0.0).sum(axis=1) / num_targets

    out = {}
    for k in ks:
        hits = (hit_rank < k).sum(axis=1)
        out[f"prec@{k}"] = hits / np.maximum(np.minimum(k, num_ranked), 1)
        out[f"recall@{k}"] = hits / num_targets
    out["map"] = ap
    return out


def evaluate(scorer, rows, ks=KS):
    """Mean Caser metrics of ``scorer.eval_scores`` over ``rows`` (``caser_dataset.eval_dataset(..., with_history=True)``).

    Returns ``{prec@k, recall@k, map, users}``.
    """
    score = tf.function(scorer.eval_scores, reduce_retracing=True, autograph=False)
    names = metric_names(ks)
    totals, users = np.zeros(len(names)), 0
    for batch in rows:
        inputs = {key: batch[key] for key in (ITEM_IDS, LENGTHS, USER_INDEX) if key in batch}
        values = user_metrics(score(inputs).numpy(), batch[HOLDOUT].numpy(), batch[HISTORY].numpy(), ks)
        totals += [values[name].sum() for name in names]
        users += len(values["map"])
    return {name: float(total) / max(users, 1) for name, total in zip(names, totals)} | {"users": users}
