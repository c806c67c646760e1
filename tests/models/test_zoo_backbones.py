"""Zoo backbones (SASRec, NARM, STAMP, GRU4Rec): shapes, causality, padding, prefix equality, serialisation."""

import keras
import numpy as np
import pytest

from peterrec.features import PAD_ID
from peterrec.models.gru4rec import GRU4RecBackbone
from peterrec.models.narm import NARMBackbone
from peterrec.models.sasrec import SASRecBackbone
from peterrec.models.stamp import STAMPBackbone

V, D, L = 50, 8, 12
MODELS = {
    "sasrec": (SASRecBackbone, dict(max_positions=L, num_heads=2, inner_size=16)),
    "sasrec_pre_ln": (SASRecBackbone, dict(max_positions=L, num_heads=2, inner_size=16, pre_ln=True)),
    "narm": (NARMBackbone, dict(hidden_size=16)),
    "narm_2_layers": (NARMBackbone, dict(hidden_size=16, num_layers=2)),
    "stamp": (STAMPBackbone, {}),
    "gru4rec": (GRU4RecBackbone, dict(hidden_size=16, num_layers=2)),
}


def _backbone(name):
    keras.utils.set_random_seed(0)
    cls, kwargs = MODELS[name]
    backbone = cls(vocabulary_size=V, embedding_dim=D, **kwargs)
    # Larger weights than RecBole's initialisers, so that no dependency is numerically invisible.
    rng = np.random.default_rng(1)
    backbone.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") if w.ndim > 1 else w for w in backbone.get_weights()])
    return backbone


def _rows(lengths, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(4, V, size=(len(lengths), L)).astype("int32")
    for row, n in enumerate(lengths):
        x[row, n:] = PAD_ID
    return x


@pytest.mark.parametrize("name", MODELS)
def test_shapes_tables_and_zero_padding_rows(name):
    backbone = _backbone(name)
    x = _rows([L, 7, 1])
    out = np.asarray(backbone(x))
    assert out.shape == (3, L, D)
    assert backbone.output_dim == backbone.embedding_dim == D and backbone.vocabulary_size == V
    assert tuple(backbone.item_embedding.embeddings.shape) == (V, D)
    assert backbone.get_layer("item_embedding") is backbone.item_embedding
    assert np.all(out[1, 7:] == 0.0) and np.all(out[2, 1:] == 0.0)
    assert np.all(np.abs(out[0]).max(axis=-1) > 0)


@pytest.mark.parametrize("name", MODELS)
def test_causal_future_items_never_change_earlier_outputs(name):
    backbone = _backbone(name)
    x = _rows([L, L])
    for t in (0, 4, L - 2):
        y = x.copy()
        y[:, t + 1 :] = (y[:, t + 1 :] - 4 + 7) % (V - 4) + 4  # other real items after t
        out_x, out_y = np.asarray(backbone(x)), np.asarray(backbone(y))
        np.testing.assert_array_equal(out_x[:, : t + 1], out_y[:, : t + 1])
        assert np.abs(out_x[:, t + 1 :] - out_y[:, t + 1 :]).max() > 1e-4


@pytest.mark.parametrize("name", MODELS)
def test_right_padding_never_changes_real_positions(name):
    backbone = _backbone(name)
    x = _rows([5])[:, :5]
    padded = np.concatenate([x, np.full((1, L - 5), PAD_ID, "int32")], axis=1)
    np.testing.assert_allclose(np.asarray(backbone(padded))[:, :5], np.asarray(backbone(x)), rtol=1e-5, atol=1e-5)
    batch = np.concatenate([padded, _rows([L], seed=3)])  # a longer row in the same batch changes nothing either
    np.testing.assert_allclose(np.asarray(backbone(batch))[:1, :5], np.asarray(backbone(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_last_hidden_equals_the_full_forward_at_the_last_real_position(name):
    """``last_hidden`` (one attention query in NARM/STAMP) is the full forward pass gathered at ``lengths - 1``,
    in value and in its gradient, for full, partial, one-item and empty rows."""
    import tensorflow as tf

    backbone = _backbone(name)
    lengths = np.array([L, 7, 1, 0, 3], "int32")
    x = _rows(lengths, seed=3)
    with tf.GradientTape(persistent=True) as tape:
        full = backbone(x)
        gathered = tf.gather(full, np.maximum(lengths - 1, 0), axis=1, batch_dims=1)
        last = backbone.last_hidden(x, lengths)
        probe = tf.random.stateless_normal(last.shape, seed=[4, 5])
        loss_full, loss_last = tf.reduce_sum(gathered * probe), tf.reduce_sum(last * probe)
    assert tuple(last.shape) == (len(lengths), D)
    np.testing.assert_allclose(last.numpy(), gathered.numpy(), rtol=1e-5, atol=1e-6)
    assert np.all(last.numpy()[3] == 0.0)  # an empty row scores from a zero state, as the full forward pass
    for g_full, g_last in zip(tape.gradient(loss_full, backbone.trainable_weights), tape.gradient(loss_last, backbone.trainable_weights)):
        np.testing.assert_allclose(tf.convert_to_tensor(g_last).numpy(), tf.convert_to_tensor(g_full).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_hidden_at_equals_the_full_forward_at_the_given_positions(name):
    """``hidden_at`` (NARM/STAMP: attention for the given queries only, what training asks for at the positions
    with loss) is the full forward pass gathered at ``(row, position)`` pairs, in value and gradient."""
    import tensorflow as tf

    backbone = _backbone(name)
    lengths = np.array([L, 7, 1, 3], "int32")
    x = _rows(lengths, seed=5)
    index = tf.constant([[0, 0], [0, 4], [0, L - 1], [1, 2], [1, 6], [2, 0], [3, 1], [3, 2]], tf.int64)
    with tf.GradientTape(persistent=True) as tape:
        gathered = tf.gather_nd(backbone(x), index)
        at = backbone.hidden_at(x, index)
        probe = tf.random.stateless_normal(at.shape, seed=[6, 7])
        loss_full, loss_at = tf.reduce_sum(gathered * probe), tf.reduce_sum(at * probe)
    assert tuple(at.shape) == (len(index), D)
    np.testing.assert_allclose(at.numpy(), gathered.numpy(), rtol=1e-5, atol=1e-6)
    for g_full, g_at in zip(tape.gradient(loss_full, backbone.trainable_weights), tape.gradient(loss_at, backbone.trainable_weights)):
        np.testing.assert_allclose(tf.convert_to_tensor(g_at).numpy(), tf.convert_to_tensor(g_full).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_hidden_at_under_mixed_bfloat16_is_close_to_float32(name):
    """``--mixed_precision`` on a CPU: the training path (``hidden_at``, outside Keras' autocasting ``__call__``) computes in bfloat16."""
    import tensorflow as tf

    from peterrec import distribute

    full = _backbone(name)
    with distribute.dtype_policy("mixed_bfloat16"):
        mixed = _backbone(name)
    mixed.set_weights(full.get_weights())
    x = _rows(np.array([L, 7, 1, 3], "int32"), seed=5)
    index = tf.constant([[0, 0], [0, L - 1], [1, 6], [2, 0], [3, 2]], tf.int64)
    at = mixed.hidden_at(x, index, training=False)
    assert at.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(at, tf.float32).numpy(), full.hidden_at(x, index, training=False).numpy(), rtol=0.1, atol=0.1)


@pytest.mark.parametrize("name", MODELS)
def test_config_round_trip_rebuilds_the_same_function(name):
    backbone = _backbone(name)
    config = keras.saving.serialize_keras_object(backbone)
    rebuilt = keras.saving.deserialize_keras_object(config)
    assert type(rebuilt) is type(backbone) and rebuilt.get_config() == backbone.get_config()
    assert [w.path for w in rebuilt.weights] == [w.path for w in backbone.weights]
    assert len({w.path for w in backbone.weights}) == len(backbone.weights)  # unique paths (the checkpoint contract)
    rebuilt.set_weights(backbone.get_weights())
    x = _rows([L, 6])
    np.testing.assert_array_equal(np.asarray(rebuilt(x)), np.asarray(backbone(x)))


def test_sasrec_positions_count_from_the_left_and_longer_rows_reuse_the_last_row():
    backbone = _backbone("sasrec")
    x = _rows([4])[:, :4]
    shifted = np.concatenate([np.array([[9]], "int32"), x], axis=1)  # one more (older) item: every position moves
    assert np.abs(np.asarray(backbone(shifted))[0, 1:] - np.asarray(backbone(x))[0]).max() > 1e-3
    long = np.concatenate([_rows([L]), np.full((1, 3), PAD_ID, "int32")], axis=1)  # serving adds a free slot
    np.testing.assert_allclose(np.asarray(backbone(long))[:, :L], np.asarray(backbone(_rows([L]))), rtol=1e-5, atol=1e-5)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _prefix(x, t):
    """RecBole's input for the prefix x[:t+1]: right-padded to the full width, and its length."""
    row = np.full((1, x.shape[1]), PAD_ID, "int32")
    row[0, : t + 1] = x[0, : t + 1]
    return row, t + 1


def test_narm_every_position_equals_recbole_forward_on_its_prefix():
    """Position t = RecBole NARM.forward(items[:t+1]) (eval mode), written out in numpy."""
    backbone = _backbone("narm")
    x = _rows([L])
    out = np.asarray(backbone(x))[0]
    weights = {w.path: np.asarray(w) for w in backbone.weights}
    table = weights["item_embedding/embeddings"]
    a1, a2, v = weights["attention/a_1/kernel"], weights["attention/a_2/kernel"], weights["attention/v_t/kernel"]
    b = weights["projection/kernel"]
    for t in range(L):
        row, length = _prefix(x, t)
        emb = table[row] * (row != PAD_ID)[..., None]  # padding_idx=0: a zero padding row
        gru_out = emb
        for i in range(backbone.num_layers):
            gru_out = backbone.get_layer(f"gru_{i}")(gru_out)
        gru_out = np.asarray(gru_out)[0]  # [L, H]
        ht = gru_out[length - 1]
        mask = (row[0] > 0)[:, None]
        alpha = (mask * _sigmoid(gru_out @ a1 + ht @ a2)) @ v  # [L, 1], no softmax
        c_local = (alpha * gru_out).sum(axis=0)
        expected = np.concatenate([c_local, ht]) @ b
        np.testing.assert_allclose(out[t], expected, rtol=1e-4, atol=1e-5)


def test_stamp_every_position_equals_recbole_forward_on_its_prefix():
    """Position t = RecBole STAMP.forward(items[:t+1]) with a zero padding row, written out in numpy."""
    backbone = _backbone("stamp")
    x = _rows([L])
    out = np.asarray(backbone(x))[0]
    w = {w.path: np.asarray(w) for w in backbone.weights}
    for t in range(L):
        row, length = _prefix(x, t)
        emb = w["item_embedding/embeddings"][row[0]] * (row[0] != PAD_ID)[:, None]  # [L, D]
        last = emb[length - 1]
        ms = emb.sum(axis=0) / length
        # no mask: padded slots get weights too, but their embedding is 0
        alpha = _sigmoid(emb @ w["attention/w1/kernel"] + last @ w["attention/w2/kernel"] + ms @ w["attention/w3/kernel"] + w["attention/b_a"])
        alpha = alpha @ w["attention/w0/kernel"]  # [L, 1]
        ma = (alpha * emb).sum(axis=0) + ms
        hs = np.tanh(ma @ w["mlp_a/kernel"] + w["mlp_a/bias"])
        ht = np.tanh(last @ w["mlp_b/kernel"] + w["mlp_b/bias"])
        np.testing.assert_allclose(out[t], hs * ht, rtol=1e-4, atol=1e-5)


def test_gru4rec_is_a_gru_and_a_projection():
    backbone = _backbone("gru4rec")
    x = _rows([L])
    h = backbone.item_embedding.embeddings.numpy()[x]
    for i in range(2):
        h = backbone.get_layer(f"gru_{i}")(h)
    expected = backbone.get_layer("projection")(h)
    np.testing.assert_allclose(np.asarray(backbone(x)), np.asarray(expected), rtol=1e-5, atol=1e-6)


def test_recbole_initialisers():
    keras.utils.set_random_seed(0)
    sasrec = SASRecBackbone(vocabulary_size=2000, embedding_dim=64)
    stamp = STAMPBackbone(vocabulary_size=2000, embedding_dim=64)
    narm = NARMBackbone(vocabulary_size=2000, embedding_dim=64)
    gru4rec = GRU4RecBackbone(vocabulary_size=2000, embedding_dim=64)
    std = lambda model, path: float(np.std([np.asarray(w) for w in model.weights if w.path == path][0]))  # noqa: E731
    assert std(sasrec, "item_embedding/embeddings") == pytest.approx(0.02, rel=0.05)
    assert std(sasrec, "block_0/attention/query/kernel") == pytest.approx(0.02, rel=0.1)
    assert std(stamp, "item_embedding/embeddings") == pytest.approx(0.002, rel=0.05)
    assert std(stamp, "attention/w1/kernel") == pytest.approx(0.05, rel=0.1)
    assert std(narm, "item_embedding/embeddings") == pytest.approx(np.sqrt(2 / (2000 + 64)), rel=0.05)  # xavier normal
    assert np.abs(narm.get_layer("gru_0").cell.recurrent_kernel.numpy()).max() <= 1 / np.sqrt(128)  # PyTorch's GRU default
    bound = np.sqrt(6 / (128 + 3 * 128))  # xavier uniform of weight_hh_l0 [3H, H]
    recurrent = gru4rec.get_layer("gru_0").cell.recurrent_kernel.numpy()
    assert np.abs(recurrent).max() <= bound and np.abs(recurrent).max() > 0.9 * bound
    assert not np.array_equal(sasrec.get_layer("block_0").attention.query_dense.kernel.numpy(),
                              sasrec.get_layer("block_0").attention.key_dense.kernel.numpy())


def test_sasrec_heads_must_divide_the_width():
    with pytest.raises(ValueError, match="num_heads"):
        SASRecBackbone(vocabulary_size=V, embedding_dim=10, num_heads=3)
