"""PeterRec model patches: the patch layer, serial/parallel placement, weight transfer, freezing."""

import math

import keras
import numpy as np
import pytest

from peterrec.backbones.nextitnet import FINETUNE_MODES, NextItNetBackbone
from peterrec.features import PAD_ID
from peterrec.layers.dilated_block import DilatedResidualBlock
from peterrec.layers.model_patch import ModelPatch

C, H = 64, 16  # demo width and its default bottleneck C // 4
ONE_PATCH = 2 * C * H + H + C  # 2,128 (peterrec.md section 7)


def _gelu_tanh(z):
    return 0.5 * z * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z**3)))


def _gelu_erf(z):
    return 0.5 * z * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))


def _randomise(model, sd=0.5, seed=1, only=None):
    """Replace the weights (all, or those whose path contains ``only``) by N(0, sd) values."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if only is None or only in weight.path:
            weight.assign(rng.normal(0, sd, weight.shape).astype("float32"))


def _pretrained(**kwargs):
    """An unpatched backbone with large random weights (never numerically invisible)."""
    keras.utils.set_random_seed(0)
    args = dict(vocabulary_size=50, embedding_dim=C)
    args.update(kwargs)
    backbone = NextItNetBackbone(**args)
    rng = np.random.default_rng(1)
    backbone.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") if w.ndim > 1 else w for w in backbone.get_weights()])
    return backbone


def _patched(source, patch_mode, **kwargs):
    config = source.get_config()
    config.update(patch_mode=patch_mode, **kwargs)
    keras.utils.set_random_seed(3)
    patched = NextItNetBackbone.from_config(config)
    loaded_not = patched.load_pretrained(source)
    assert loaded_not == [w.path for w in patched.weights if "/patch" in w.path]
    return patched


def _ids(seed=2, shape=(3, 30), with_padding=True):
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, 50, size=shape).astype("int32")
    if with_padding:
        ids[0, -5:] = PAD_ID  # right padding in one row
    return ids


# === ModelPatch ===


def test_model_patch_output_shape_and_weights():
    patch = ModelPatch(channels=8, bottleneck=2)
    out = patch(np.zeros((2, 5, 8), "float32"))
    assert tuple(out.shape) == (2, 5, 8)
    shapes = {w.path: tuple(w.shape) for w in patch.weights}
    assert shapes == {
        "model_patch/down/kernel": (8, 2),
        "model_patch/down/bias": (2,),
        "model_patch/up/kernel": (2, 8),
        "model_patch/up/bias": (8,),
    }
    assert np.all(np.asarray(patch.down.bias) == 0) and np.all(np.asarray(patch.up.bias) == 0)
    kernel = np.asarray(patch.down.kernel)
    assert 0 < np.abs(kernel).max() <= 0.04 + 1e-7  # truncated normal sd 0.02, cut at 2 sd


def test_model_patch_zero_init_up_is_exactly_the_identity():
    patch = ModelPatch(channels=8, bottleneck=2, zero_init_up=True)
    x = np.random.default_rng(0).normal(0, 3, (2, 5, 8)).astype("float32")
    np.testing.assert_array_equal(np.asarray(patch(x)), x)
    assert np.all(np.asarray(patch.up.kernel) == 0) and np.abs(np.asarray(patch.down.kernel)).max() > 0


def test_model_patch_is_x_plus_up_gelu_tanh_down():
    patch = ModelPatch(channels=8, bottleneck=4)
    x = np.random.default_rng(0).normal(0, 1.5, (3, 7, 8)).astype("float32")
    patch.build(x.shape)
    _randomise(patch, sd=0.8)
    wd, bd = np.asarray(patch.down.kernel, "float64"), np.asarray(patch.down.bias, "float64")
    wu, bu = np.asarray(patch.up.kernel, "float64"), np.asarray(patch.up.bias, "float64")
    z = x.astype("float64") @ wd + bd
    expected = x + _gelu_tanh(z) @ wu + bu
    out = np.asarray(patch(x), "float64")
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    with_erf = x + _gelu_erf(z) @ wu + bu  # the exact GELU is measurably different
    assert np.abs(out - with_erf).max() > 1e-4


def test_model_patch_config_round_trip():
    patch = ModelPatch(channels=8, bottleneck=3, zero_init_up=True, name="p")
    config = patch.get_config()
    assert {k: config[k] for k in ("channels", "bottleneck", "zero_init_up")} == dict(channels=8, bottleneck=3, zero_init_up=True)
    clone = ModelPatch.from_config(config)
    assert clone.get_config() == config
    x = np.random.default_rng(0).normal(size=(1, 4, 8)).astype("float32")
    patch(x)
    clone(x)
    _randomise(patch)
    clone.set_weights(patch.get_weights())
    np.testing.assert_allclose(np.asarray(clone(x)), np.asarray(patch(x)), atol=1e-6)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(patch))
    assert isinstance(restored, ModelPatch) and restored.get_config() == config


def test_block_rejects_unknown_patch_mode():
    with pytest.raises(ValueError, match="patch_mode"):
        DilatedResidualBlock(8, 1, patch_mode="series")


def test_unpatched_block_config_and_paths_unchanged():
    backbone = NextItNetBackbone(vocabulary_size=20, embedding_dim=8, dilations=[1, 2])
    assert not any("patch" in w.path for w in backbone.weights)
    config = backbone.get_layer("block_0").get_config()
    assert (config["patch_mode"], config["patch_dim"], config["patch_zero_init"]) == (None, None, False)
    assert backbone.get_config()["patch_mode"] is None


# === Serial patches ===


@pytest.mark.parametrize("causal", [True, False])
def test_serial_zero_init_equals_the_pretrained_function(causal):
    source = _pretrained(causal=causal)
    patched = _patched(source, "serial", patch_zero_init=True)
    ids = _ids()
    np.testing.assert_allclose(np.asarray(patched(ids)), np.asarray(source(ids)), atol=1e-6)
    assert patched.get_layer("block_3").patch1.down.kernel.path == "block_3/patch1/down/kernel"


@pytest.mark.parametrize("causal", [True, False])
def test_serial_faithful_init_is_close_to_the_pretrained_function(causal):
    """With the original's init (W_up, W_down ~ truncated normal sd 0.02, biases 0) MP is only near the identity.

    Patch-level bound. For one position x, z = W_down x + b_down and g = GELU_tanh(z). Since
    GELU_tanh(z) = z * s(z) with s(z) = (1 + tanh(...)) / 2 in (0, 1), |g_i| <= |z_i|, hence
    ||g|| <= ||z|| <= ||W_down||_op ||x|| + ||b_down||. Elementwise, by the triangle and
    Cauchy-Schwarz inequalities,

        |MP(x) - x|_j = |(W_up g)_j + b_up_j| <= ||g|| ||W_up[:, j]|| + |b_up_j|
                      <= (||W_down||_op ||x|| + ||b_down||) ||W_up[:, j]|| + |b_up_j|.

    Both are checked exactly on patch1 of block 0 applied to that block's real conv1 output.

    Network level (first order). With zero biases each patch moves its LayerNorm input h by
    at most eps = ||W_up||_op ||W_down||_op relative to ||h||; LayerNorm is invariant to the
    scale of h, so its output moves by O(eps) relative to its unit-variance output, and the
    16 perturbations add up to first order through the 1-Lipschitz ReLUs and the residual
    stream. eps ~ 0.02^2 (sqrt(C) + sqrt(h))^2 ~ 0.06 in the worst direction and far less on
    average, so the whole-network difference must be non-zero but a small fraction of the
    output's standard deviation (measured ~1 % RMS; asserted < 5 % RMS and < 20 % max).
    """
    source = _pretrained(causal=causal)
    patched = _patched(source, "serial")
    ids = _ids()
    ref, out = np.asarray(source(ids)), np.asarray(patched(ids))
    diff = out - ref
    assert np.abs(diff).max() > 0
    assert np.sqrt(np.mean(diff**2)) < 0.05 * ref.std()
    assert np.abs(diff).max() < 0.20 * ref.std()

    # Patch-level bound, exactly, on real activations.
    block = patched.get_layer("block_0")
    x = np.asarray(block.conv1(patched.embedding(ids)), "float64")
    patch = block.patch1
    wd, bd = np.asarray(patch.down.kernel, "float64"), np.asarray(patch.down.bias, "float64")
    wu, bu = np.asarray(patch.up.kernel, "float64"), np.asarray(patch.up.bias, "float64")
    delta = np.abs(np.asarray(patch(x.astype("float32")), "float64") - x)
    g_norm = np.linalg.norm(_gelu_tanh(x @ wd + bd), axis=-1, keepdims=True)
    col_norms = np.linalg.norm(wu, axis=0)
    tol = 1e-5 * (1 + np.abs(x))  # float32 rounding of x + small
    assert np.all(delta <= g_norm * col_norms + np.abs(bu) + tol)
    z_bound = np.linalg.norm(wd, 2) * np.linalg.norm(x, axis=-1, keepdims=True) + np.linalg.norm(bd)
    assert np.all(delta <= z_bound * col_norms + np.abs(bu) + tol)
    assert delta.max() > 0
    eps = np.linalg.norm(wu, 2) * np.linalg.norm(wd, 2)
    assert eps < 0.1


# === Parallel patches ===


def _block_by_hand(block, x, parallel):
    relu = lambda t: np.maximum(np.asarray(t), 0.0)  # noqa: E731
    if parallel:
        r = relu(block.ln1(block.conv1(x) + block.patch1(x)))
        h = relu(block.ln2(block.conv2(r) + block.patch2(r)))
    else:
        r = relu(block.ln1(block.patch1(block.conv1(x))))
        h = relu(block.ln2(block.patch2(block.conv2(r))))
    return np.asarray(x) + h


@pytest.mark.parametrize("causal", [True, False])
def test_parallel_patch_placement_by_hand(causal):
    backbone = NextItNetBackbone(vocabulary_size=50, embedding_dim=16, dilations=[1, 4], causal=causal, patch_mode="parallel")
    _randomise(backbone)
    for block in backbone.blocks:
        assert tuple(block.patch1.down.kernel.shape) == (16, 4) and tuple(block.patch1.up.kernel.shape) == (4, 16)
        assert tuple(block.patch2.down.kernel.shape) == (16, 4) and tuple(block.patch2.up.kernel.shape) == (4, 16)
    ids = _ids(shape=(2, 12), with_padding=False)  # no padding: the mask is all ones
    x = np.asarray(backbone.embedding(ids))
    for block in backbone.blocks:
        expected = _block_by_hand(block, x, parallel=True)
        np.testing.assert_allclose(np.asarray(block(x)), expected, rtol=1e-5, atol=1e-5)
        # The serial formula gives something else: the placement is really observed.
        assert np.abs(_block_by_hand(block, x, parallel=False) - expected).max() > 1e-2
        x = expected
    np.testing.assert_allclose(np.asarray(backbone(ids)), x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("zero_init", [False, True])
def test_parallel_at_init_is_not_the_pretrained_function(zero_init):
    """Documented property of the original: MP's identity adds the branch input before each LayerNorm."""
    source = _pretrained()
    patched = _patched(source, "parallel", patch_zero_init=zero_init)
    ids = _ids()
    ref = np.asarray(source(ids))
    assert np.sqrt(np.mean((np.asarray(patched(ids)) - ref) ** 2)) > 0.1 * ref.std()


@pytest.mark.parametrize("causal", [True, False])
def test_parallel_without_identity_and_zero_init_is_the_pretrained_function(causal):
    """--noparallel_identity: conv(x) + f(x); with a zero up-projection f = 0 at init (docs/fidelity.md f9)."""
    source = _pretrained(causal=causal)
    patched = _patched(source, "parallel", patch_zero_init=True, parallel_identity=False)
    ids = _ids()
    np.testing.assert_allclose(np.asarray(patched(ids)), np.asarray(source(ids)), atol=1e-5)
    assert not patched.get_layer("block_0").patch1.identity
    clone = NextItNetBackbone.from_config(patched.get_config())
    assert clone.get_config()["parallel_identity"] is False


# === Serialisation, all four combinations ===


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("patch_mode", ["serial", "parallel"])
def test_patched_round_trips(tmp_path, causal, patch_mode):
    backbone = NextItNetBackbone(vocabulary_size=30, embedding_dim=8, dilations=[1, 2], causal=causal, patch_mode=patch_mode)
    _randomise(backbone)
    ids = np.array([[5, 6, 7, 8, PAD_ID], [9, 10, 11, 12, 13]], dtype="int32")
    out = np.asarray(backbone(ids))
    assert out.shape == (2, 5, 8)

    config = backbone.get_config()
    assert (config["patch_mode"], config["patch_dim"], config["patch_zero_init"]) == (patch_mode, 2, False)
    clone = NextItNetBackbone.from_config(config)
    assert clone.get_config() == config
    clone.set_weights(backbone.get_weights())
    np.testing.assert_allclose(np.asarray(clone(ids)), out, atol=1e-6)

    path = str(tmp_path / "patched.keras")
    backbone.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_config() == config
    assert [w.path for w in loaded.weights] == [w.path for w in backbone.weights]
    np.testing.assert_allclose(np.asarray(loaded(ids)), out, atol=1e-6)


# === Freezing ===


def _count(weights):
    return sum(int(np.prod(w.shape)) for w in weights)


def test_finetune_modes_select_the_intended_weights():
    backbone = NextItNetBackbone(vocabulary_size=50, embedding_dim=C, patch_mode="serial")
    all_paths = {w.path for w in backbone.weights}

    assert backbone.set_finetune_mode("peterrec") is None
    trainable = {w.path for w in backbone.trainable_weights}
    expected = {p for p in all_paths if "/patch" in p or p.endswith(("/ln2/gamma", "/ln2/beta"))}
    assert trainable == expected
    assert _count(backbone.trainable_weights) == 16 * ONE_PATCH + 8 * 2 * C == 34_048 + 1_024

    backbone.set_finetune_mode("finelast")
    assert {w.path for w in backbone.trainable_weights} == {p for p in all_paths if p.startswith("block_7/")}
    assert _count(backbone.trainable_weights) == 2 * (3 * C * C + C) + 2 * 2 * C + 2 * ONE_PATCH

    for mode in ("fineall", "scratch"):
        backbone.set_finetune_mode(mode)
        assert {w.path for w in backbone.trainable_weights} == all_paths
        assert _count(backbone.trainable_weights) == 50 * C + 197_632 + 2_048 + 34_048

    backbone.set_finetune_mode("frozen")
    assert backbone.trainable_weights == []
    backbone.set_finetune_mode("peterrec")  # modes can be switched back
    assert {w.path for w in backbone.trainable_weights} == expected
    assert set(FINETUNE_MODES) == {"peterrec", "fineall", "finelast", "scratch", "frozen"}


def test_finetune_mode_errors():
    backbone = NextItNetBackbone(vocabulary_size=20, embedding_dim=8, dilations=[1], patch_mode="parallel")
    with pytest.raises(ValueError, match="peterrec.*fineall.*finelast.*scratch.*frozen"):
        backbone.set_finetune_mode("adapters")
    plain = NextItNetBackbone(vocabulary_size=20, embedding_dim=8, dilations=[1])
    with pytest.raises(ValueError, match="patched"):
        plain.set_finetune_mode("peterrec")


def test_peterrec_training_updates_only_patches_and_ln2():
    backbone = NextItNetBackbone(vocabulary_size=20, embedding_dim=8, dilations=[1, 2], patch_mode="serial")
    backbone.set_finetune_mode("peterrec")
    backbone.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    before = {w.path: np.asarray(w).copy() for w in backbone.weights}
    ids = _ids(shape=(4, 6), with_padding=False) % 20
    backbone.train_on_batch(ids, np.ones((4, 6, 8), "float32"))
    for w in backbone.weights:
        changed = not np.array_equal(np.asarray(w), before[w.path])
        trained = "/patch" in w.path or "/ln2/" in w.path
        assert changed == trained, w.path


# === load_pretrained ===


def test_load_pretrained_from_a_weights_file(tmp_path):
    source = _pretrained(causal=False, dilations=[1, 4])
    path = str(tmp_path / "backbone.weights.h5")
    source.save_weights(path)
    config = source.get_config()
    config.update(patch_mode="serial", patch_zero_init=True)
    patched = NextItNetBackbone.from_config(config)
    not_loaded = patched.load_pretrained(path)
    assert not_loaded == [w.path for w in patched.weights if "/patch" in w.path] and len(not_loaded) == 16
    ids = _ids()
    np.testing.assert_allclose(np.asarray(patched(ids)), np.asarray(source(ids)), atol=1e-6)

    other = NextItNetBackbone(vocabulary_size=50, embedding_dim=C, dilations=[1, 4, 1], patch_mode="serial")
    with pytest.raises(ValueError, match="backbone.weights.h5"):
        other.load_pretrained(path)


def test_load_pretrained_shape_mismatch_names_the_path():
    patched = NextItNetBackbone(vocabulary_size=50, embedding_dim=8, dilations=[1, 4], patch_mode="serial")
    before = [np.asarray(w).copy() for w in patched.weights]
    with pytest.raises(ValueError, match="item_embedding/embeddings"):
        patched.load_pretrained(NextItNetBackbone(vocabulary_size=60, embedding_dim=8, dilations=[1, 4]))
    values = {w.path: np.asarray(w) for w in NextItNetBackbone(vocabulary_size=50, embedding_dim=8, dilations=[1, 4]).weights}
    values["block_1/conv2/kernel"] = np.zeros((3, 8, 9), "float32")
    with pytest.raises(ValueError, match=r"block_1/conv2/kernel.*\(3, 8, 9\)"):
        patched.load_pretrained(values)
    for weight, old in zip(patched.weights, before):  # nothing assigned on error
        np.testing.assert_array_equal(np.asarray(weight), old)


def test_load_pretrained_unused_source_weights_are_listed():
    patched = NextItNetBackbone(vocabulary_size=50, embedding_dim=8, dilations=[1, 4], patch_mode="serial")
    deeper = NextItNetBackbone(vocabulary_size=50, embedding_dim=8, dilations=[1, 4, 1])
    with pytest.raises(ValueError, match=r"block_2/conv1/kernel.*block_2/ln2/gamma"):
        patched.load_pretrained(deeper)
    values = {w.path: np.asarray(w) for w in NextItNetBackbone(vocabulary_size=50, embedding_dim=8, dilations=[1, 4]).weights}
    values["head/softmax_w"] = np.zeros((8, 50), "float32")
    with pytest.raises(ValueError, match="head/softmax_w"):
        patched.load_pretrained(values)
    del values["head/softmax_w"]
    assert len(patched.load_pretrained(values)) == 16  # a dict source works
