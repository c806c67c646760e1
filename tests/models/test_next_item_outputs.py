"""NextItemTask output layers (dense, tied) and losses (full/sampled softmax, BCE, BPR) on every backbone."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from peterrec import losses
from peterrec.backbones.nextitnet import NextItNetBackbone
from peterrec.features import ITEM_IDS, LABELS, NUM_RESERVED, SAMPLE_WEIGHT
from peterrec.models.sasrec import SASRecBackbone
from peterrec.models.stamp import STAMPBackbone
from peterrec.tasks.next_item import NextItemTask

V, D = 30, 8


def _batch():
    ids = np.array([[5, 6, 7, 0], [8, 9, 0, 0]], "int32")
    labels = np.array([[6, 7, 10, 0], [9, 11, 0, 0]], "int32")
    weights = (ids > 0).astype("float32")
    return {ITEM_IDS: tf.constant(ids), LABELS: tf.constant(labels), SAMPLE_WEIGHT: tf.constant(weights)}


def _task(backbone="stamp", **kwargs):
    keras.utils.set_random_seed(0)
    if backbone == "stamp":
        model = STAMPBackbone(vocabulary_size=V, embedding_dim=D)
        model.item_embedding.embeddings.assign(np.random.default_rng(0).normal(0, 0.5, (V, D)).astype("float32"))
    elif backbone == "sasrec":
        model = SASRecBackbone(vocabulary_size=V, embedding_dim=D, max_positions=4, inner_size=8)
    else:
        model = NextItNetBackbone(vocabulary_size=V, embedding_dim=D, dilations=[1, 2])
    return NextItemTask(model, item_counts=[0] * NUM_RESERVED + [3] * (V - NUM_RESERVED), **kwargs)


def test_tied_logits_are_dot_products_with_the_input_item_table():
    task = _task(output="tied")
    assert [w.path for w in task.weights] == [w.path for w in task.backbone.weights]  # no output weights of its own
    hidden = np.random.default_rng(1).normal(size=(3, D)).astype("float32")
    table = task.backbone.item_embedding.embeddings.numpy()
    np.testing.assert_allclose(np.asarray(task.logits(hidden)), hidden @ table.T, rtol=1e-5, atol=1e-6)
    ids = tf.constant([4, 9, 29])
    np.testing.assert_allclose(np.asarray(task.item_scores(tf.constant(hidden), ids)), (hidden * table[[4, 9, 29]]).sum(-1), rtol=1e-5)
    scores = task.score_last(_batch()[ITEM_IDS], tf.constant([3, 2])).numpy()
    hidden_last = np.asarray(task(_batch()[ITEM_IDS]))[[0, 1], [2, 1]]
    np.testing.assert_allclose(scores, hidden_last @ table.T, rtol=1e-5, atol=1e-6)


def test_tied_needs_hidden_states_as_wide_as_the_embeddings():
    backbone = NextItNetBackbone(vocabulary_size=V, embedding_dim=D, dilations=[1], causal=False, max_positions=5)  # 2D wide
    with pytest.raises(ValueError, match="tied"):
        NextItemTask(backbone, output="tied")


def test_dense_item_scores_match_the_full_logits():
    for loss in ("bce", "sampled_softmax"):
        task = _task("nextitnet", loss=loss)
        hidden = tf.constant(np.random.default_rng(2).normal(size=(4, D)).astype("float32"))
        ids = tf.constant([4, 5, 17, 29])
        full = np.asarray(task.logits(hidden))
        np.testing.assert_allclose(np.asarray(task.item_scores(hidden, ids)), full[np.arange(4), ids.numpy()], rtol=1e-5, atol=1e-6)


def test_nextitnet_task_config_and_weights_are_unchanged_by_default():
    task = _task("nextitnet")
    assert "output" not in task.get_config()  # exports written before the zoo keep their exact config.json
    assert [w.path for w in task.weights if not w.path.startswith("block")] == ["item_embedding/embeddings", "logits/kernel", "logits/bias"]
    rebuilt = NextItemTask.from_config(task.get_config())
    assert rebuilt.output_type == "dense" and rebuilt.loss_name == "full_softmax"
    tied = _task(output="tied", loss="bpr")
    assert NextItemTask.from_config(tied.get_config()).output_type == "tied"


def test_uniform_negatives_are_real_items_other_than_the_label():
    labels = tf.constant(np.tile(np.arange(0, V, dtype="int32"), 400))
    negatives = losses.uniform_negatives(labels, V, seed=keras.random.SeedGenerator(3)).numpy()
    assert negatives.min() >= NUM_RESERVED and negatives.max() < V
    assert not np.any(negatives == labels.numpy())
    counts = np.bincount(negatives, minlength=V)[NUM_RESERVED:]
    assert counts.min() > 0.6 * counts.mean()  # every real item is drawn, roughly uniformly


def test_pairwise_losses_hand_values():
    pos, neg, w = tf.constant([2.0, -1.0]), tf.constant([0.5, 0.0]), tf.constant([1.0, 0.5])
    log_sig = lambda z: -np.log1p(np.exp(-z))  # noqa: E731
    bce = -(log_sig(2.0) + log_sig(-0.5)) - 0.5 * (log_sig(-1.0) + log_sig(0.0))
    bpr = -log_sig(1.5) - 0.5 * log_sig(-1.0)
    assert float(losses.pairwise_sum("bce", pos, neg, w)) == pytest.approx(bce, rel=1e-5)
    assert float(losses.pairwise_sum("bpr", pos, neg, w)) == pytest.approx(bpr, rel=1e-5)


@pytest.mark.parametrize("loss", ["bce", "bpr"])
@pytest.mark.parametrize("output", ["tied", "dense"])
def test_pairwise_task_loss_uses_one_negative_per_weighted_position(monkeypatch, loss, output):
    task = _task("sasrec", loss=loss, output=output)
    batch = _batch()
    fixed = lambda labels, vocabulary_size, seed=None: (tf.cast(labels, tf.int32) - 4 + 3) % (V - 4) + 4  # noqa: E731
    monkeypatch.setattr(losses, "uniform_negatives", fixed)
    for static in (False, True):
        got = float(task.loss_sum(batch, training=False, static_shapes=static))
        logits = np.asarray(task.logits(task(batch[ITEM_IDS])))
        labels, weights = batch[LABELS].numpy(), batch[SAMPLE_WEIGHT].numpy()
        negatives = np.asarray(fixed(labels, V))
        pos = np.take_along_axis(logits, labels[..., None], -1)[..., 0]
        neg = np.take_along_axis(logits, negatives[..., None], -1)[..., 0]
        per = np.logaddexp(0, -pos) + np.logaddexp(0, neg) if loss == "bce" else np.logaddexp(0, neg - pos)
        assert got == pytest.approx(float((per * weights).sum()), rel=1e-4)


@pytest.mark.parametrize("loss", ["full_softmax", "sampled_softmax", "bce", "bpr"])
def test_every_loss_trains_the_tied_output(loss):
    task = _task("sasrec", loss=loss, output="tied", sampled_fraction=0.5)
    batch = _batch()
    table = task.backbone.item_embedding.embeddings
    with tf.GradientTape() as tape:
        value = task.loss_sum(batch, training=True)
    grad = tape.gradient(value, table)
    assert np.isfinite(float(value)) and float(value) > 0
    assert float(tf.norm(tf.convert_to_tensor(grad))) > 0
    assert task.uses_candidate_sampler() == (loss == "sampled_softmax")


@pytest.mark.parametrize("backbone", ["narm", "stamp"])
def test_loss_at_the_weighted_positions_only_equals_the_full_forward_loss(backbone):
    """NARM/STAMP's loss_sum computes the attention for the positions with weight > 0 only (``hidden_at``);
    the loss is the one of the full forward pass (``static_shapes``: every position, weights 0 elsewhere)."""
    task = _task(backbone, output="tied")
    batch = _batch()
    assert float(tf.reduce_min(batch[SAMPLE_WEIGHT])) == 0.0  # some positions carry no loss
    assert float(task.loss_sum(batch, training=False)) == pytest.approx(float(task.loss_sum(batch, training=False, static_shapes=True)), rel=1e-5)


def test_softmax_ce_and_its_gradient_equal_tfs_kernel():
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(0, 3, (2, 3, 7)).astype("float32") + np.float32(60) * (rng.random((2, 3, 7)) > 0.8))
    labels = tf.constant(rng.integers(0, 7, (2, 3)).astype("int32"))
    upstream = tf.constant(rng.random((2, 3)).astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(logits)
        ours = losses.softmax_ce(labels, logits)
        theirs = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        ours_sum, theirs_sum = tf.reduce_sum(ours * upstream), tf.reduce_sum(theirs * upstream)
    assert ours.shape == (2, 3)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tape.gradient(ours_sum, logits).numpy(), tape.gradient(theirs_sum, logits).numpy(), rtol=1e-5, atol=1e-6)
    hand = -np.log(np.exp(2.0) / (np.exp(2.0) + np.exp(0.0) + np.exp(-1.0)))
    assert float(losses.softmax_ce(tf.constant([0]), tf.constant([[2.0, 0.0, -1.0]]))[0]) == pytest.approx(hand, rel=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError):
        losses.softmax_ce(tf.constant([7]), tf.zeros([1, 7]))


def test_full_softmax_loss_under_xla_equals_eager():
    task = _task("sasrec", output="tied")
    batch = _batch()
    eager = float(task.loss_sum(batch, training=False))
    compiled = tf.function(lambda b: task.loss_sum(b, training=False, static_shapes=True), jit_compile=True)
    assert float(compiled(batch)) == pytest.approx(eager, rel=1e-5)


@pytest.mark.parametrize("backbone, output", [("stamp", "tied"), ("sasrec", "tied"), ("nextitnet", "dense")])
@pytest.mark.parametrize("loss", ["full_softmax", "bpr"])
def test_last_loss_sum_equals_loss_sum_with_the_target_at_the_last_position(monkeypatch, backbone, output, loss):
    """CASR's generated rows carry one target each: ``last_loss_sum`` (the last position only) is the
    ``loss_sum`` of the same rows with the label and weight placed at ``lengths - 1``."""
    fixed = lambda labels, vocabulary_size, seed=None: (tf.cast(labels, tf.int32) - 4 + 3) % (V - 4) + 4  # noqa: E731
    monkeypatch.setattr(losses, "uniform_negatives", fixed)
    task = _task(backbone, loss=loss, output=output)
    ids = tf.constant([[5, 6, 7, 0], [8, 9, 0, 0], [12, 13, 14, 15]], tf.int32)
    lengths, labels, weights = tf.constant([3, 2, 4]), tf.constant([10, 11, 17]), tf.constant([0.5, 0.5, 2.0])
    at_last = tf.one_hot(lengths - 1, 4)
    placed = {ITEM_IDS: ids, LABELS: tf.cast(at_last, tf.int32) * labels[:, None], SAMPLE_WEIGHT: at_last * weights[:, None]}
    expected = float(task.loss_sum(placed, training=False))
    got = float(task.last_loss_sum({ITEM_IDS: ids, "lengths": lengths, LABELS: labels, SAMPLE_WEIGHT: weights}, training=False))
    assert got == pytest.approx(expected, rel=1e-5)
