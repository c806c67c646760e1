"""NextItNet backbone: causality, receptive field, padding, serialisation, parameter count."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from peterrec.backbones.nextitnet import NextItNetBackbone, receptive_field
from peterrec.features import PAD_ID


def _backbone(**kwargs):
    keras.utils.set_random_seed(0)
    args = dict(vocabulary_size=50, embedding_dim=8, dilations=[1, 4, 1, 4, 1, 4, 1, 4])
    args.update(kwargs)
    backbone = NextItNetBackbone(**args)
    # Larger weights than the 0.02 initialiser so that a dependency is never numerically invisible.
    rng = np.random.default_rng(1)
    backbone.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") if w.ndim > 1 else w for w in backbone.get_weights()])
    return backbone


def test_default_receptive_field_is_121():
    assert receptive_field([1, 4] * 4, 3) == 121


def test_causal_future_inputs_do_not_change_past_outputs():
    backbone = _backbone()
    rng = np.random.default_rng(0)
    x = rng.integers(4, 50, size=(2, 30)).astype("int32")
    y = x.copy()
    y[:, 16:] = rng.integers(4, 50, size=(2, 14))
    out_x, out_y = np.asarray(backbone(x)), np.asarray(backbone(y))
    np.testing.assert_array_equal(out_x[:, :16], out_y[:, :16])
    assert np.abs(out_x[:, 16:] - out_y[:, 16:]).max() > 1e-3


def test_receptive_field_by_perturbation():
    """Output t depends on input t-120 and not on input t-121 (default dilations, k=3)."""
    backbone = _backbone(vocabulary_size=200)
    t = 125
    x = np.arange(4, 4 + t + 1, dtype="int32")[None, :]  # unique ids: one embedding row per position
    table = backbone.embedding.embeddings
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(backbone(x)[0, t])
    grad = tf.convert_to_tensor(tape.gradient(total, table))
    row_norm = lambda pos: float(tf.norm(grad[x[0, pos]]))  # noqa: E731
    assert row_norm(t - 120) > 0.0 and row_norm(t) > 0.0
    assert row_norm(t - 121) == 0.0
    outside = x.copy()
    outside[0, t - 121] = 199
    np.testing.assert_array_equal(np.asarray(backbone(outside))[0, t], np.asarray(backbone(x))[0, t])


def test_right_padding_does_not_change_real_positions():
    backbone = _backbone()
    x = np.array([[5, 6, 7, 8, 9]], dtype="int32")
    padded = np.concatenate([x, np.full((1, 7), PAD_ID, "int32")], axis=1)
    np.testing.assert_allclose(np.asarray(backbone(padded))[:, :5], np.asarray(backbone(x)), rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(backbone(padded))[:, 5:] == 0.0)  # padded outputs are zeroed


def test_non_causal_padding_is_masked():
    backbone = _backbone(causal=False, dilations=[1, 2])
    x = np.array([[5, 6, 7, 8, 9]], dtype="int32")
    padded = np.concatenate([x, np.full((1, 4), PAD_ID, "int32")], axis=1)
    np.testing.assert_allclose(np.asarray(backbone(padded))[:, :5], np.asarray(backbone(x)), atol=1e-5)


def test_non_causal_sees_both_sides():
    backbone = _backbone(causal=False, dilations=[1, 2])
    x = np.array([[5, 6, 7, 8, 9, 10, 11]], dtype="int32")
    y = x.copy()
    y[0, 6] = 20
    assert np.abs(np.asarray(backbone(x))[0, 3] - np.asarray(backbone(y))[0, 3]).max() > 1e-4


def test_config_round_trip_and_named_layers():
    backbone = _backbone(dropout=0.1)
    config = backbone.get_config()
    clone = NextItNetBackbone.from_config(config)
    assert clone.get_config() == config
    clone.set_weights(backbone.get_weights())
    x = np.array([[5, 6, 7, 0]], dtype="int32")
    np.testing.assert_allclose(np.asarray(clone(x)), np.asarray(backbone(x)), atol=1e-6)
    paths = [w.path for w in backbone.weights]
    assert "item_embedding/embeddings" in paths and "block_7/conv2/kernel" in paths and "block_3/ln2/gamma" in paths
    assert len(paths) == len(set(paths))


def test_parameter_count_matches_the_original_shapes():
    backbone = NextItNetBackbone(vocabulary_size=175, embedding_dim=64)
    counts = {w.path: int(np.prod(w.shape)) for w in backbone.weights}
    convs = sum(v for k, v in counts.items() if "conv" in k)
    norms = sum(v for k, v in counts.items() if "/ln" in k)
    assert convs == 197_632  # 16 convs of 3*64*64 + 64 (peterrec.md section 7)
    assert norms == 2_048
    assert counts["item_embedding/embeddings"] == 175 * 64
    kernel = backbone.get_layer("block_0").conv1.kernel
    assert tuple(kernel.shape) == (3, 64, 64)


@pytest.mark.parametrize("causal", [True, False])
def test_saved_keras_file_round_trip(tmp_path, causal):
    backbone = _backbone(causal=causal, dilations=[1, 2])
    path = str(tmp_path / "backbone.keras")
    backbone.save(path)
    loaded = keras.saving.load_model(path)
    x = np.array([[5, 6, 7, 0]], dtype="int32")
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(backbone(x)), atol=1e-6)
