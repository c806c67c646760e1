"""GRec-encoder (masked-item / cloze) pretraining: masking, chunks, end-mask scoring, the job."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from peterrec import export, pretraining
from peterrec.data import cloze, tfrecord
from peterrec.data.vocab import Vocabulary
from peterrec.errors import ConfigError
from peterrec.features import ITEM_IDS, LABELS, LENGTHS, MASK_ID, NUM_RESERVED, PAD_ID, ROLE_LOO, ROLE_TEST, ROLE_TRAIN, ROLE_VALID, SAMPLE_WEIGHT
from peterrec.tasks.masked_item import MaskedItemTask, end_mask

TINY = dict(embedding_dim=32, dilations=(1, 4), batch_size=64, max_len=30, stride=10, verbose=0, num_shards=4, backbone="grec")


def _config(tmp_path, data, name, **overrides):
    args = dict(TINY, data=str(data), tfrecord_dir=str(tmp_path / "tfr"), model_dir=str(tmp_path / name))
    args.update(overrides)
    return pretraining.PretrainConfig(**args)


# ---------------------------------------------------------------- masking rule
def _random_chunks(n, max_len, vocab, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len + 1, size=n)
    ids = rng.integers(NUM_RESERVED, vocab, size=(n, max_len))
    ids[np.arange(max_len)[None, :] >= lengths[:, None]] = PAD_ID
    return ids.astype(np.int32), lengths.astype(np.int32)


def _mask(ids, lengths, seed, vocab, **kwargs):
    out = cloze.mask_positions(tf.constant(ids), tf.constant(lengths), tf.constant(seed, tf.int64), vocabulary_size=vocab, **kwargs)
    return {k: v.numpy() for k, v in out.items()}


def test_masking_rule_on_a_large_sample():
    vocab, max_len = 500, 120  # long enough for the 30-prediction cap (w >= 103)
    ids, lengths = _random_chunks(20000, max_len, vocab)
    out = _mask(ids, lengths, [7, 3], vocab)
    chosen = out[SAMPLE_WEIGHT] > 0
    real = ids != PAD_ID
    np.testing.assert_array_equal(out[LABELS], ids)
    assert not np.any(chosen & ~real)  # pads are never chosen
    np.testing.assert_array_equal(out[ITEM_IDS][~chosen], ids[~chosen])  # only chosen positions change
    expected = [min(30, max(1, int(np.floor(0.3 * w + 0.5)))) for w in lengths]  # half away from zero (Python 2's round)
    np.testing.assert_array_equal(chosen.sum(axis=1), expected)
    assert cloze.num_masked(5) == 2 and cloze.num_masked(15) == 5 and cloze.num_masked(1) == 1 and cloze.num_masked(200) == 30
    new, old = out[ITEM_IDS][chosen], ids[chosen]
    shares = {"mask": np.mean(new == MASK_ID), "keep": np.mean(new == old), "random": np.mean((new != MASK_ID) & (new != old))}
    assert abs(shares["mask"] - 0.8) < 0.01 and abs(shares["keep"] - 0.1) < 0.01 and abs(shares["random"] - 0.1) < 0.01, shares
    replaced = new[(new != MASK_ID) & (new != old)]
    assert replaced.min() >= NUM_RESERVED and replaced.max() < vocab  # random replacements are real items
    assert len(np.unique(replaced)) > 0.9 * (vocab - NUM_RESERVED)
    # Positions are chosen uniformly among the real ones: each position of a 10-item chunk with p = 3/10.
    rows = lengths == 10
    np.testing.assert_allclose(chosen[rows, :10].mean(axis=0), 0.3, atol=0.06)
    # Same seed, same masks; another seed, other masks.
    again = _mask(ids, lengths, [7, 3], vocab)
    np.testing.assert_array_equal(again[ITEM_IDS], out[ITEM_IDS])
    other = _mask(ids, lengths, [7, 4], vocab)
    assert not np.array_equal(other[SAMPLE_WEIGHT], out[SAMPLE_WEIGHT])


def test_mask_count_rounds_half_away_from_zero_as_the_original():
    """The original's Python 2 round(0.3 * w): 15 items -> 5 masks (round half to even would give 4), in the
    Python twin and in the TF masking itself."""
    halves = {5: 2, 15: 5, 25: 8, 35: 11, 55: 17, 75: 23, 95: 29}
    for w, count in halves.items():
        assert cloze.num_masked(w) == count, w
    max_len = 100
    lengths = np.array(list(halves), np.int32)
    ids = np.where(np.arange(max_len)[None, :] < lengths[:, None], NUM_RESERVED, PAD_ID).astype(np.int32)
    out = _mask(ids, lengths, [3, 9], 50)
    np.testing.assert_array_equal((out[SAMPLE_WEIGHT] > 0).sum(axis=1), list(halves.values()))
    assert cloze.round_half_away(4.5) == 5 and cloze.round_half_away(4.499999) == 4 and cloze.round_half_away(7.5) == 8


def test_mask_prob_and_max_predictions():
    ids, lengths = _random_chunks(500, 60, 100, seed=1)
    out = _mask(ids, lengths, [1, 1], 100, mask_prob=0.5, max_predictions=7)
    np.testing.assert_array_equal((out[SAMPLE_WEIGHT] > 0).sum(axis=1), [min(7, max(1, int(np.floor(0.5 * w + 0.5)))) for w in lengths])


# ---------------------------------------------------------------- chunks over a TFRecord set
def _record(user, items, role):
    return {"user": user, "items": list(items), "timestamps": [], "role": role, "targets": []}


@pytest.fixture
def chunk_set(tmp_path):
    records = [
        _record("loo", range(100, 125), ROLE_LOO),  # train 100..122 (23 items), valid 123, test 124
        _record("train7", range(200, 207), ROLE_TRAIN),
        _record("train12", range(300, 312), ROLE_TRAIN),
        _record("train1", [400], ROLE_TRAIN),
        _record("valid", range(500, 506), ROLE_VALID),
        _record("test", range(600, 604), ROLE_TEST),
    ]
    out = tmp_path / "set"
    hist = {"loo": {"25": 1}, "train": {"7": 1, "12": 1, "1": 1}, "valid": {"6": 1}, "test": {"4": 1}}
    tfrecord.write_tfrecord_set(records, str(out), 2, {"length_histogram": hist, "vocab_size": 700})
    return str(out), tfrecord.load_metadata(str(out))


def _cloze(set_dir, steps, **kwargs):
    args = dict(max_len=5, batch_size=1, steps=steps, seed=3, vocabulary_size=700)
    args.update(kwargs)
    return list(cloze.cloze_train_dataset(set_dir, **args).as_numpy_iterator())


def test_chunks_cover_each_training_item_once(chunk_set):
    set_dir, metadata = chunk_set
    chunks = cloze.num_cloze_chunks(metadata, 5)
    assert chunks == 5 + 2 + 3 + 1
    assert cloze.cloze_steps_per_epoch(metadata, 5, 4) == 3
    batches = _cloze(set_dir, chunks)
    labels = np.concatenate([b[LABELS] for b in batches])
    weights = np.concatenate([b[SAMPLE_WEIGHT] for b in batches])
    trained = sorted(labels[labels != PAD_ID].tolist())
    assert trained == [*range(100, 123), *range(200, 207), *range(300, 312), 400]  # never held-out items or valid/test users
    assert weights.sum() == cloze.num_cloze_targets(metadata, 5)
    rows = {tuple(r[r != PAD_ID]) for r in labels}
    assert tuple(range(118, 123)) in rows and (100, 101, 102) in rows  # cut from the end: the most recent items fill a chunk
    assert tuple(range(307, 312)) in rows and (300, 301) in rows
    for row, w in zip(labels, weights):
        real = row != PAD_ID
        assert np.all(real[: real.sum()]) and not np.any(real[real.sum():])  # right-padded
        assert w.sum() == cloze.num_masked(real.sum()) and not np.any(w[~real])


def test_cloze_stream_is_seeded_and_resumable(chunk_set):
    set_dir, metadata = chunk_set
    steps = cloze.num_cloze_chunks(metadata, 5)
    first = _cloze(set_dir, steps)
    again = _cloze(set_dir, steps)
    resumed = _cloze(set_dir, steps, skip_steps=4)
    for key in (ITEM_IDS, LABELS, SAMPLE_WEIGHT):
        assert all(np.array_equal(a[key], b[key]) for a, b in zip(first, again))
        assert len(resumed) == steps - 4 and all(np.array_equal(a[key], b[key]) for a, b in zip(first[4:], resumed))
    next_epoch = _cloze(set_dir, steps, epoch=1)
    masks = lambda batches: sorted((tuple(b[LABELS][0]), tuple(b[ITEM_IDS][0])) for b in batches)  # noqa: E731
    assert masks(next_epoch) != masks(first)  # other masks in another epoch


# ---------------------------------------------------------------- model
@pytest.fixture
def grec_task():
    vocab = Vocabulary([f"i{k}" for k in range(40)])
    cfg = pretraining.PretrainConfig(backbone="grec", embedding_dim=16, dilations=(1, 2), max_len=8)
    task = pretraining.build_task(cfg, vocab)
    causal = pretraining.build_task(pretraining.PretrainConfig(embedding_dim=16, dilations=(1, 2)), vocab)
    return task, causal


def test_grec_backbone_sees_both_sides(grec_task):
    task, causal = grec_task
    assert isinstance(task, MaskedItemTask) and not task.backbone.causal
    a = np.array([[5, 6, 7, 8, 9, 10, 0, 0]])
    b = a.copy()
    b[0, 4] = 20  # change input t + 1 = 4
    for model, sees_future in ((task, True), (causal, False)):
        ha, hb = model.backbone(a).numpy(), model.backbone(b).numpy()
        assert np.abs(ha[0, 3] - hb[0, 3]).max() > 1e-4 if sees_future else np.allclose(ha[0, 3], hb[0, 3])
        np.testing.assert_array_equal(ha[0, 6:], 0.0)  # pads stay masked


def test_score_last_reads_the_end_mask(grec_task):
    task, _ = grec_task
    ids = np.array([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9], [0, 0, 0, 0, 0]], np.int32)
    lengths = np.array([3, 5, 0], np.int32)
    masked, position = (t.numpy() for t in end_mask(ids, lengths))
    np.testing.assert_array_equal(masked, [[5, 6, 7, MASK_ID, 0], [6, 7, 8, 9, MASK_ID], [MASK_ID, 0, 0, 0, 0]])
    np.testing.assert_array_equal(position, [3, 4, 0])
    hidden = task.backbone(masked).numpy()  # the manual forward pass
    expected = task.logits(hidden[np.arange(3), position]).numpy()
    np.testing.assert_allclose(task.score_last(ids, lengths).numpy(), expected, rtol=1e-5, atol=1e-5)
    batch = {ITEM_IDS: tf.constant(ids), LENGTHS: tf.constant(lengths), LABELS: tf.constant([8, 10, 5])}
    np.testing.assert_allclose(task.eval_scores(batch).numpy(), expected, rtol=1e-5, atol=1e-5)
    # The end mask is not the causal reading of the last item.
    assert not np.allclose(task.logits(hidden[:1, 2]).numpy()[0], expected[0])


def test_masked_item_task_serialises(grec_task):
    task, _ = grec_task
    import keras

    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(task))
    assert isinstance(clone, MaskedItemTask) and clone.get_config()["loss"] == task.loss_name
    clone.set_weights(task.get_weights())
    ids, lengths = np.array([[5, 6, 7, 0]], np.int32), np.array([3], np.int32)
    np.testing.assert_allclose(clone.score_last(ids, lengths), task.score_last(ids, lengths), rtol=1e-6)


# ---------------------------------------------------------------- the job
@pytest.fixture(scope="module")
def trained(small_world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grec")
    cfg = _config(tmp, small_world / "source.inter", "run", epochs=6, learning_rate=3e-3, patience=2)
    return cfg, pretraining.run(cfg)


def test_grec_learns_well_above_popularity(trained):
    cfg, metrics = trained
    assert metrics["valid"]["hr@10"] >= 2 * metrics["popularity"]["valid"]["hr@10"], metrics
    assert metrics["test"]["hr@10"] >= 2 * metrics["popularity"]["test"]["hr@10"], metrics


def test_grec_job_outputs_and_export(trained, small_world):
    cfg, metrics = trained
    for name in ("export", "logs", "ckpt", "metrics.json", "curves.png", "job_config.json"):
        assert os.path.exists(os.path.join(cfg.model_dir, name)), name
    job = json.load(open(os.path.join(cfg.model_dir, "job_config.json")))
    assert job["backbone"] == "grec" and job["mask_prob"] == 0.3 and job["max_predictions"] == 30
    config = json.load(open(os.path.join(metrics["export_dir"], "config.json")))
    assert config["backbone_name"] == "grec" and config["task"]["class_name"] == "MaskedItemTask"
    assert config["backbone"]["config"]["causal"] is False
    assert pretraining.PretrainConfig(backbone="grec").resolved_model_dir() == os.path.join("checkpoints", "pretrain-grec")

    loaded = export.load_export(cfg.model_dir)
    assert isinstance(loaded.task, MaskedItemTask)
    served = tf.saved_model.load(metrics["export_dir"])
    lines = open(small_world / "source.inter").read().splitlines()[1:200]
    seq = [line.split("\t")[1] for line in lines if line.startswith(lines[0].split("\t")[0] + "\t")]
    rows = [seq[:12] + [""] * 3, [""] * 3 + seq[:12]]
    out = served.signatures["serving_default"](item_ids=tf.constant(rows))
    ids, scores = out["top_k_ids"].numpy(), out["top_k_scores"].numpy()
    np.testing.assert_array_equal(ids[0], ids[1])  # padding side does not matter
    encoded, _ = loaded.vocab.encode(seq[:12])
    logits = loaded.task.score_last(tf.constant([list(encoded) + [PAD_ID] * 3], tf.int32), tf.constant([12]))[0].numpy()
    logits[:NUM_RESERVED] = -np.inf
    expected = np.argsort(-logits, kind="stable")[: ids.shape[1]]
    assert [t.decode() for t in ids[0][:10]] == loaded.vocab.decode(expected[:10])
    np.testing.assert_allclose(scores[0], logits[expected], rtol=1e-4, atol=1e-4)
    assert not any(t.decode().startswith("[") for t in ids.ravel())


def test_grec_sampled_softmax_trains(mini_world, tmp_path):
    metrics = pretraining.run(_config(tmp_path, mini_world / "source.inter", "sampled", epochs=1, loss="sampled_softmax"))
    assert np.isfinite(metrics["valid"]["mrr@10"]) and metrics["global_step"] > 0


@pytest.mark.parametrize(
    "overrides, flag",
    [(dict(pad_as_item=True), "--pad_as_item"), (dict(mask_prob=0.0), "--mask_prob"), (dict(max_predictions=0), "--max_predictions")],
)
def test_bad_grec_settings_name_the_flag(tmp_path, overrides, flag):
    with pytest.raises(ConfigError, match=flag):
        pretraining.run(_config(tmp_path, "unused.inter", "bad", **overrides))
    assert not os.path.exists(tmp_path / "bad")


def test_positional_embedding_is_concatenated_and_trains(mini_world, tmp_path):
    import keras as _keras

    from peterrec.backbones.nextitnet import NextItNetBackbone

    backbone = NextItNetBackbone(50, 8, [1, 2], causal=False, max_positions=10)
    out = backbone(np.array([[5, 6, 7, 0, 0]], dtype="int32"))
    assert out.shape == (1, 5, 16) and backbone.output_dim == 16
    assert "position_embedding/embeddings" in [w.path for w in backbone.weights]
    # the original's initialiser: tf.get_variable without one = Glorot uniform, limit sqrt(6 / (rows + dim))
    table = next(w for w in backbone.weights if w.path == "position_embedding/embeddings").numpy()
    limit = np.sqrt(6.0 / (10 + 8))
    assert np.abs(table).max() <= limit and np.abs(table).max() > 0.8 * limit and abs(table.std() - limit / np.sqrt(3)) < 0.25 * limit
    clone = _keras.saving.deserialize_keras_object(_keras.saving.serialize_keras_object(backbone))
    clone.set_weights(backbone.get_weights())
    np.testing.assert_allclose(np.asarray(clone(np.array([[5, 6, 7, 0, 0]], dtype="int32"))), np.asarray(out), atol=1e-6)
    cfg = pretraining.PretrainConfig(backbone="grec", positional_embedding=True, data=str(mini_world / "source.inter"),
                                     tfrecord_dir=str(tmp_path / "tfr"), model_dir=str(tmp_path / "pos"), embedding_dim=16,
                                     dilations=(1, 4), max_len=20, epochs=1, verbose=0, num_shards=2)
    metrics = pretraining.run(cfg)
    assert np.isfinite(metrics["valid"]["mrr@10"])
    with pytest.raises(ConfigError, match="positional_embedding"):
        pretraining.run(pretraining.PretrainConfig(positional_embedding=True, model_dir=str(tmp_path / "bad")))
