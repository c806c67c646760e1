"""CASR interventions: where a candidate is changed, what replaces the item, and its label.

The counterfactual arithmetic of CASR stage 2 (:mod:`peterrec.augment.generate`
turns training prefixes into candidates with it) and of the ``ad`` method
inside the anchor's training step (:func:`adversarial_samples`, called by
:class:`peterrec.augment.task.CounterfactualTask`):

* :func:`intervention_positions` picks the position ``k`` (never padding);
* ``heuristic`` draws ``i'`` uniform or popularity-weighted
  (:func:`allowed_replacements`, :func:`sample_rows`);
* ``learning`` moves the embedding at ``k`` towards the sampler's decision
  boundary (:func:`boundary_search`, CW-style hinge with margin ``kappa`` + L2
  closeness) and maps it back to an item (:func:`map_back`, softmax over
  item similarities at temperature ``tao``);
* :func:`sampler_labels` labels a candidate with the frozen sampler's top-1
  over the real items minus the held-out targets (:func:`forbid`).

Every random draw comes from uniforms passed in by the caller (stateless,
keyed by ``(seed, user index)``), so the functions are deterministic.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from peterrec.augment.embeddings import item_table, last_logits, replace_at
from peterrec.eval.ranking import NEG_INF, exclude_reserved
from peterrec.features import ITEM_IDS, LENGTHS, NUM_RESERVED
from peterrec.losses import softmax_ce

METHODS = ("heuristic", "learning", "ad")
POSITIONS = ("from_end", "from_start", "random")
REPLACEMENTS = ("uniform", "popularity")
SIMILARITIES = ("cosine", "dot", "euclidean")
LABEL_RULES = ("argmax", "sampled")
FILTERS = ("none", "flip", "confidence")
MAX_HELDOUT = 2  # leave-one-out: the validation and the test target
HELDOUT = "heldout"  # int [B, MAX_HELDOUT], -1 = none
POSITIONS_KEY = "positions"


@dataclasses.dataclass(frozen=True)
class Intervention:
    """How a candidate is made from a prefix (see the module docstring and docs/fidelity.md, CASR)."""

    method: str = "learning"
    position: str = "from_end"  # from_end: k = length - index; from_start: k = index - 1; random: uniform over the prefix
    index: int = 2
    replacement: str = "uniform"  # heuristic only
    kappa: float = 0.0  # hinge margin (learning); confidence filter threshold
    tao: float = 0.1  # temperature of map_back's softmax
    iters: int = 1  # gradient steps of the boundary / adversarial search
    step_size: float = 0.5  # step length, in units of the RMS item-embedding norm
    closeness: float = 0.1  # weight of ||e' - e||^2 / rms^2
    similarity: str = "cosine"
    label: str = "argmax"
    filter: str = "none"
    candidates: int = 4  # ad: replacements drawn from map_back; the one with the highest anchor loss is kept

    @property
    def uniforms(self):
        """Uniforms a candidate consumes: position, label, then one per replacement draw."""
        return 2 + max(1, self.candidates if self.method == "ad" else 1)


# ------------------------------------------------------------------ small tensor helpers
def forbid(scores, heldout):
    """Scores ``[B, V]`` with reserved ids and each row's held-out ids set below every real score."""
    scores = exclude_reserved(scores)
    ids = tf.range(tf.shape(scores)[1])
    hit = tf.reduce_any(tf.equal(ids[None, None, :], tf.cast(heldout, tf.int32)[:, :, None]), axis=1)
    return tf.where(hit, tf.fill(tf.shape(scores), NEG_INF), scores)


def allowed_replacements(vocabulary_size, heldout, original):
    """``[B, V]`` bool: real ids that are neither the row's original item nor a held-out target."""
    ids = tf.range(vocabulary_size)[None, :]
    held = tf.reduce_any(tf.equal(ids[:, None, :], tf.cast(heldout, tf.int32)[:, :, None]), axis=1)
    return (ids >= NUM_RESERVED) & ~held & (ids != tf.cast(original, tf.int32)[:, None])


def sample_rows(weights, u):
    """One index per row of non-negative ``weights`` ``[B, V]`` by inverse CDF at ``u`` ``[B]`` in [0, 1)."""
    cdf = tf.cumsum(tf.cast(weights, tf.float64), axis=1)
    x = tf.cast(u, tf.float64)[:, None] * cdf[:, -1:]
    index = tf.searchsorted(cdf, x, side="right")[:, 0]
    return tf.minimum(tf.cast(index, tf.int32), tf.shape(weights)[1] - 1)


def intervention_positions(lengths, intervention, u):
    """Intervention position ``k`` per row (0-based from the oldest item; always ``< length``)."""
    lengths = tf.cast(lengths, tf.int32)
    if intervention.position == "from_end":
        k = lengths - intervention.index
    elif intervention.position == "from_start":
        k = tf.fill(tf.shape(lengths), intervention.index - 1)
    else:
        k = tf.cast(tf.floor(tf.cast(u, tf.float32) * tf.cast(lengths, tf.float32)), tf.int32)
    return tf.clip_by_value(k, 0, tf.maximum(lengths - 1, 0))


def min_prefix_length(intervention):
    """Shortest prefix that has the intervention position."""
    return 1 if intervention.position == "random" else intervention.index


def with_item(item_ids, positions, items):
    """``item_ids`` with row ``b``'s ``positions[b]`` set to ``items[b]``."""
    rows = tf.range(tf.shape(item_ids)[0])
    return tf.tensor_scatter_nd_update(item_ids, tf.stack([rows, positions], axis=1), tf.cast(items, item_ids.dtype))


def rms_norm(table):
    """Root mean square norm of the real items' embeddings (the unit of ``step_size``)."""
    real = table[NUM_RESERVED:]
    return tf.sqrt(tf.reduce_mean(tf.reduce_sum(tf.square(real), axis=-1)) + 1e-12)


def similarities(table, vectors, kind):
    """``[B, V]`` similarity of each vector ``[B, D]`` to every row of ``table`` ``[V, D]``."""
    table, vectors = tf.cast(table, tf.float32), tf.cast(vectors, tf.float32)
    if kind == "cosine":
        return tf.matmul(tf.math.l2_normalize(vectors, -1), tf.math.l2_normalize(table, -1), transpose_b=True)
    dots = tf.matmul(vectors, table, transpose_b=True)
    if kind == "dot":
        return dots
    return 2.0 * dots - tf.reduce_sum(tf.square(table), -1)[None, :] - tf.reduce_sum(tf.square(vectors), -1)[:, None]


def map_back(table, vectors, allowed, intervention, u):
    """Draw an item per row from ``softmax(similarity(table, vector) / tao)`` over the ``allowed`` ids."""
    logits = similarities(table, vectors, intervention.similarity) / intervention.tao
    logits = tf.where(allowed, logits, tf.fill(tf.shape(logits), NEG_INF))
    return sample_rows(tf.nn.softmax(logits, axis=-1), u)


def _normalised(gradient):
    return gradient / tf.maximum(tf.norm(gradient, axis=-1, keepdims=True), 1e-12)


# ------------------------------------------------------------------ data-oriented: boundary search on the sampler
def boundary_objective(task, item_ids, lengths, positions, heldout, e_prime, e_orig, y0, kappa, closeness, scale):
    """Per-row ``hinge + closeness * ||e' - e||^2 / scale^2`` and the hinge.

    ``hinge = max(z_y0 - max_{j != y0} z_j + kappa, 0)`` on the sampler's
    logits at the last position of the prefix whose embedding at ``positions``
    is ``e_prime``: zero once another allowed item beats the original top-1
    ``y0`` by ``kappa`` (Carlini-Wagner's f6).
    """
    embeddings = replace_at(item_ids, positions, item_table(task), e_prime)
    logits = forbid(last_logits(task, item_ids, lengths, embeddings), heldout)
    top = tf.one_hot(y0, tf.shape(logits)[1], on_value=True, off_value=False, dtype=tf.bool)
    z_y0 = tf.reduce_sum(tf.where(top, logits, 0.0), axis=1)
    z_other = tf.reduce_max(tf.where(top, tf.fill(tf.shape(logits), NEG_INF), logits), axis=1)
    hinge = tf.nn.relu(z_y0 - z_other + kappa)
    distance = tf.reduce_sum(tf.square(e_prime - e_orig), axis=-1) / tf.square(scale)
    return hinge + closeness * distance, hinge


def boundary_gradient(task, item_ids, lengths, positions, heldout, e_prime, e_orig, y0, kappa, closeness, scale):
    """Gradient of :func:`boundary_objective` w.r.t. ``e_prime`` only.

    The tape watches ``e_prime`` and nothing else (``watch_accessed_variables=False``):
    the sampler's variables are read as constants. Returns ``(gradient, hinge, watched_variables)``;
    ``watched_variables`` is always empty (kept for the tests).
    """
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(e_prime)
        objective, hinge = boundary_objective(task, item_ids, lengths, positions, heldout, e_prime, e_orig, y0, kappa, closeness, scale)
    return tape.gradient(objective, e_prime), hinge, tape.watched_variables()


def boundary_search(task, item_ids, lengths, positions, heldout, y0, intervention):
    """``iters`` normalised gradient steps of :func:`boundary_objective` from the original embedding.

    A row stops moving once its hinge is 0 (the flip holds with margin kappa).
    Returns the searched embeddings ``[B, D]``.
    """
    table = item_table(task)
    scale = rms_norm(table)
    e_orig = tf.gather(table, tf.gather(item_ids, positions, batch_dims=1))
    e_prime = e_orig
    for _ in range(intervention.iters):
        gradient, hinge, _ = boundary_gradient(
            task, item_ids, lengths, positions, heldout, e_prime, e_orig, y0, intervention.kappa, intervention.closeness, scale
        )
        moved = e_prime - intervention.step_size * scale * _normalised(gradient)
        e_prime = tf.where(hinge[:, None] > 0, moved, e_prime)
    return e_prime


# ------------------------------------------------------------------ labels and one batch of candidates
def sampler_labels(task, item_ids, lengths, heldout, label_rule="argmax", u=None):
    """``(label, top1, margin)`` of the sampler on prefixes: top-1 over real, non-held-out items,
    the label (top-1, or a draw from the softmax when ``label_rule == "sampled"``) and the top-1 - top-2 logit margin."""
    scores = forbid(last_logits(task, item_ids, lengths), heldout)
    top = tf.math.top_k(scores, k=2)
    top1 = tf.cast(top.indices[:, 0], tf.int32)
    label = top1 if label_rule == "argmax" else sample_rows(tf.nn.softmax(scores, axis=-1), u)
    return label, top1, top.values[:, 0] - top.values[:, 1]


def candidates(sampler, batch, intervention, popularity=None):
    """Counterfactual candidates (heuristic or learning) for a batch of prefix rows.

    Args:
        sampler: the frozen sampler's next-item task.
        batch: rows of :func:`training_prefixes` (``item_ids``, ``lengths``,
            ``positions``, ``heldout``, ``u_replace``, ``u_label``).
        intervention: an :class:`Intervention`.
        popularity: float ``[V]`` training counts (``replacement == "popularity"``).

    Returns:
        ``item_ids`` (the counterfactual prefixes), ``old_item``, ``new_item``,
        ``label``, ``top1_before``, ``top1_after``, ``flipped``, ``margin`` and
        ``keep`` (the filter's verdict).
    """
    item_ids, lengths, positions = batch[ITEM_IDS], batch[LENGTHS], batch[POSITIONS_KEY]
    heldout = batch[HELDOUT]
    old = tf.gather(item_ids, positions, batch_dims=1)
    vocabulary_size = sampler.backbone.vocabulary_size
    allowed = allowed_replacements(vocabulary_size, heldout, old)
    _, top1_before, _ = sampler_labels(sampler, item_ids, lengths, heldout)
    if intervention.method == "heuristic":
        base = tf.ones([vocabulary_size]) if intervention.replacement == "uniform" else tf.cast(popularity, tf.float32)
        new = sample_rows(tf.where(allowed, base[None, :], 0.0), batch["u_replace"])
    else:
        e_prime = boundary_search(sampler, item_ids, lengths, positions, heldout, top1_before, intervention)
        new = map_back(item_table(sampler), e_prime, allowed, intervention, batch["u_replace"])
    generated = with_item(item_ids, positions, new)
    label, top1_after, margin = sampler_labels(sampler, generated, lengths, heldout, intervention.label, batch["u_label"])
    flipped = tf.not_equal(top1_after, top1_before)
    if intervention.filter == "flip":
        keep = flipped
    elif intervention.filter == "confidence":
        keep = margin >= intervention.kappa
    else:
        keep = tf.ones_like(flipped)
    return {
        ITEM_IDS: generated,
        "old_item": old,
        "new_item": new,
        "label": label,
        "top1_before": top1_before,
        "top1_after": top1_after,
        "flipped": flipped,
        "margin": margin,
        "keep": keep,
    }


# ------------------------------------------------------------------ model-oriented: in the anchor's training step
def adversarial_samples(anchor, sampler, item_ids, lengths, heldout, uniforms, intervention, y0=None):
    """Replacements that raise the current anchor's loss, labelled by the sampler (CASR's "AD").

    1. ``y0`` = the sampler's top-1 on the original prefix; ``e'`` starts at
       the anchor's embedding of the item at ``k`` and takes ``iters``
       normalised gradient *ascent* steps on ``CE(A(s[e']), y0) - closeness *
       ||e' - e||^2 / rms^2`` (a tape watching ``e'`` only);
    2. ``candidates`` items are drawn by :func:`map_back` through the anchor's
       table; each candidate ``s'`` is labelled ``y' = argmax S(s')`` and the
       one with the highest anchor cross-entropy ``CE(A(s'), y')`` is kept.

    Args:
        uniforms: float ``[B, intervention.uniforms]`` in [0, 1).
        y0: the sampler's top-1 on the original prefixes ``[B]`` when known (stage 2 stores it;
            the sampler is frozen), else computed here.

    Returns:
        ``(item_ids', labels [B], flipped [B])``; no gradient flows through them.
    """
    item_ids, lengths = tf.cast(item_ids, tf.int32), tf.cast(lengths, tf.int32)
    positions = intervention_positions(lengths, intervention, uniforms[:, 0])
    old = tf.gather(item_ids, positions, batch_dims=1)
    if y0 is None:
        _, y0, _ = sampler_labels(sampler, item_ids, lengths, heldout)
    y0 = tf.cast(y0, tf.int32)
    table = item_table(anchor)
    scale = rms_norm(table)
    e_orig = tf.gather(table, old)
    e_prime = e_orig
    for _ in range(intervention.iters):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(e_prime)
            logits = last_logits(anchor, item_ids, lengths, replace_at(item_ids, positions, table, e_prime))
            ce = softmax_ce(y0, logits)
            objective = ce - intervention.closeness * tf.reduce_sum(tf.square(e_prime - e_orig), -1) / tf.square(scale)
        e_prime = e_prime + intervention.step_size * scale * _normalised(tape.gradient(objective, e_prime))
    allowed = allowed_replacements(anchor.backbone.vocabulary_size, heldout, old)
    best_ids = best_labels = best_top1 = best_ce = None
    for c in range(max(1, intervention.candidates)):  # one candidate at a time: memory of one batch
        ids_c = with_item(item_ids, positions, map_back(table, e_prime, allowed, intervention, uniforms[:, 2 + c]))
        labels_c, top1_c, _ = sampler_labels(sampler, ids_c, lengths, heldout, intervention.label, uniforms[:, 1])
        ce_c = softmax_ce(labels_c, last_logits(anchor, ids_c, lengths))
        if best_ids is None:
            best_ids, best_labels, best_top1, best_ce = ids_c, labels_c, top1_c, ce_c
            continue
        better = ce_c > best_ce
        best_ids = tf.where(better[:, None], ids_c, best_ids)
        best_labels, best_top1, best_ce = (tf.where(better, a, b) for a, b in ((labels_c, best_labels), (top1_c, best_top1), (ce_c, best_ce)))
    new_ids, labels, flipped = best_ids, best_labels, tf.not_equal(best_top1, y0)
    return tf.stop_gradient(new_ids), tf.stop_gradient(labels), flipped
