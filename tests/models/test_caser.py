"""Caser: network, sliding windows, negatives, Caser's metric set, training on the shared loop, export."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from peterrec import export
from peterrec.data import caser_dataset, convert, dataset, tfrecord
from peterrec.data.vocab import Vocabulary
from peterrec.errors import ConfigError, DataError
from peterrec.eval import caser_metrics
from peterrec.features import ITEM_IDS, LABELS, LENGTHS, NUM_RESERVED, PAD_ID, SAMPLE_WEIGHT
from peterrec.models.caser import Caser, CaserConfig
from peterrec.recipes.caser import build_caser_job
from peterrec.tasks.caser import CaserTask, left_align
from peterrec.training import PopularityScorer, TrainConfig, Trainer

V, U = 20, 6  # vocabulary (4 reserved + 16 items) and user rows of the unit tests


def _write_inter(path, lengths, n_items=None):
    """One user per length; user k's items cycle through the catalogue from offset k."""
    n_items = n_items or max(lengths) + 5
    with open(path, "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for u, n in enumerate(lengths):
            for t in range(n):
                f.write(f"u{u:03d}\ti{(u + t) % n_items:03d}\t{t}\n")
    return path


def _set(tmp_path, lengths, n_items=None, name="set"):
    out = str(tmp_path / name)
    convert.convert(_write_inter(str(tmp_path / f"{name}.inter"), lengths, n_items), "inter", out, num_shards=2)
    return out, tfrecord.load_metadata(out), Vocabulary.load(out)


def _train_histories(set_dir):
    """{user bytes: training item ids} read back from the set."""
    rows = dataset._records(set_dir).map(lambda r: (r["user"], dataset.train_items(r)))
    return {u: items for u, items in rows.as_numpy_iterator()}


# ---------------------------------------------------------------- the network
def _reference_forward(model, items, users):
    """caser_pytorch's forward in numpy from the Keras weights (PyTorch layouts: see the comments)."""
    L = model.L
    E = model.item_embedding.embeddings.numpy()[items]  # [B, L, d]
    Wv = model.conv_v.kernel.numpy()[:, 0, 0, :]  # Keras (L, 1, 1, nv) -> [L, nv]
    out_v = np.einsum("lf,bld->bfd", Wv, E) + model.conv_v.bias.numpy()[None, :, None]
    parts = [out_v.reshape(len(items), -1)]  # PyTorch's view(-1, nv*d): filter-major
    for h, conv in enumerate(model.conv_h, start=1):
        K, b = conv.kernel.numpy(), conv.bias.numpy()  # (h, d, nh)
        out = np.stack([np.einsum("bid,idf->bf", E[:, t : t + h], K) + b for t in range(L - h + 1)], axis=1)
        parts.append(np.maximum(out, 0).max(axis=1))
    z = np.maximum(np.concatenate(parts, 1) @ model.fc1.kernel.numpy() + model.fc1.bias.numpy(), 0)
    P = model.user_embedding.embeddings.numpy()[users] * (users != 0)[:, None]
    x = np.concatenate([z, P], 1)
    return x, x @ model.W2.numpy().T + model.b2.numpy()


def test_network_matches_the_original_forward_and_shapes():
    keras.utils.set_random_seed(0)
    model = Caser(V, U, L=4, d=6, nv=3, nh=2, drop_rate=0.5)
    assert model.W2.shape == (V, 12) and model.b2.shape == (V,)
    assert model.conv_v.kernel.shape == (4, 1, 1, 3) and [c.kernel.shape for c in model.conv_h] == [(h, 6, 2) for h in range(1, 5)]
    items = np.random.default_rng(0).integers(0, V, size=(5, 4)).astype("int32")
    users = np.array([0, 1, 2, 5, 3], "int32")
    x = model({ITEM_IDS: items, "user_index": users}, training=False).numpy()
    ref_x, ref_scores = _reference_forward(model, items, users)
    np.testing.assert_allclose(x, ref_x, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(x[0, 6:], 0.0)  # unknown user: zero user vector
    scores = model.score_all(x).numpy()
    assert scores.shape == (5, V)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)
    picks = np.array([[4, 7, 19]] * 5, "int32")
    np.testing.assert_allclose(model.score_items(x, picks).numpy(), np.take_along_axis(scores, picks, 1), rtol=1e-5)
    # Dropout only in training; the config rebuilds the same architecture.
    assert not np.allclose(model({ITEM_IDS: items, "user_index": users}, training=True).numpy(), x)
    clone = Caser.from_config(model.get_config())
    assert [w.shape for w in clone.weights] == [w.shape for w in model.weights]


def test_initialisers_follow_caser_pytorch():
    keras.utils.set_random_seed(0)
    model = Caser(2000, 1000, L=5, d=50, nv=4, nh=16)
    assert np.std(model.item_embedding.embeddings.numpy()) == pytest.approx(1 / 50, rel=0.05)
    assert np.std(model.user_embedding.embeddings.numpy()) == pytest.approx(1 / 50, rel=0.05)
    assert np.std(model.W2.numpy()) == pytest.approx(1 / 100, rel=0.05)
    assert not np.any(model.b2.numpy())
    bound = 1 / np.sqrt(model.fc1.kernel.shape[0])  # PyTorch's Linear default: U(+-1/sqrt(fan_in))
    assert np.abs(model.fc1.kernel.numpy()).max() <= bound and np.abs(model.fc1.bias.numpy()).max() <= bound
    assert np.abs(model.fc1.kernel.numpy()).max() > 0.9 * bound


def test_tied_variant_scores_with_the_input_embeddings():
    keras.utils.set_random_seed(0)
    model = Caser(V, U, L=3, d=4, nv=2, nh=2, tied=True, reg_weight=1e-3)
    assert not hasattr(model, "W2")
    items = np.array([[0, 5, 6], [7, 8, 9]], "int32")
    x = model({ITEM_IDS: items, "user_index": np.array([1, 2], "int32")}, training=False)
    assert x.shape == (2, 4)
    np.testing.assert_allclose(model.score_all(x).numpy(), x.numpy() @ model.item_embedding.embeddings.numpy().T, rtol=1e-5)
    # RecBole's penalty: reg_weight * ||W|| over user, item, conv_v, fc1 and fc2 weights (not squared).
    expected = 1e-3 * sum(
        np.linalg.norm(w.numpy())
        for w in (model.user_embedding.embeddings, model.item_embedding.embeddings, model.conv_v.kernel, model.fc1.kernel, model.fc2.kernel)
    )
    assert float(tf.add_n(model.losses)) == pytest.approx(expected, rel=1e-5)


def test_weight_decay_is_the_originals_coupled_l2_on_every_weight():
    model = Caser(V, U, L=3, d=4, nv=2, nh=2, l2=1e-2)
    expected = 0.5 * 1e-2 * sum(float(np.sum(np.square(w.numpy()))) for w in model.trainable_weights)
    assert len(model.losses) == len(model.trainable_weights)
    assert float(tf.add_n(model.losses)) == pytest.approx(expected, rel=1e-5)


def test_loss_is_the_originals_two_means():
    keras.utils.set_random_seed(1)
    task = CaserTask(Caser(V, U, L=3, d=4, nv=2, nh=2, drop_rate=0.0), neg_samples=2)
    batch = {
        ITEM_IDS: np.array([[4, 5, 6], [0, 7, 8]], "int32"),
        "user_index": np.array([1, 2], "int32"),
        LABELS: np.array([[9, 10], [11, 12]], "int32"),
        SAMPLE_WEIGHT: np.ones((2, 2), "float32"),
        "negatives": np.array([[13, 14], [15, 16]], "int32"),
    }
    x = task(batch, training=False)
    pos = task.backbone.score_items(x, batch[LABELS]).numpy()
    neg = task.backbone.score_items(x, batch["negatives"]).numpy()
    sig = lambda s: 1 / (1 + np.exp(-s))  # noqa: E731
    original = -np.mean(np.log(sig(pos))) - np.mean(np.log(1 - sig(neg)))
    loss = float(task.loss_sum(batch, training=False)) / float(task.loss_count(batch))
    assert loss == pytest.approx(original, rel=1e-5)
    # A padding target carries no loss and does not count.
    batch[SAMPLE_WEIGHT] = np.array([[1, 1], [0, 1]], "float32")
    assert float(task.loss_count(batch)) == 3.0


def test_left_align_takes_the_last_L_items():
    rows = np.array([[5, 6, 7, 8, 0], [5, 6, 0, 0, 0], [5, 0, 0, 0, 0]], "int32")
    out = left_align(rows, np.array([4, 2, 0]), 3).numpy()
    np.testing.assert_array_equal(out, [[6, 7, 8], [0, 5, 6], [0, 0, 0]])


# ---------------------------------------------------------------- windows and negatives
def test_window_counts_and_contents(tmp_path):
    # leave-one-out: training history c = n - 2 -> 1, 2, 6, 8, 9, 10, 23 items.
    set_dir, metadata, vocab = _set(tmp_path, [3, 4, 8, 10, 11, 12, 25])
    L, T = 5, 3
    users = caser_dataset.scan_users(set_dir, vocab.size)
    histories = _train_histories(set_dir)
    expected = sum(max(c - (L + T) + 1, 1) for c in (1, 2, 6, 8, 9, 10, 23))
    assert expected == 1 + 1 + 1 + 1 + 2 + 3 + 16
    assert caser_dataset.num_train_windows(metadata, L, T) == expected
    rows = list(
        caser_dataset.train_windows(set_dir, users, L=L, T=T, neg_samples=3, vocabulary_size=vocab.size, seed=1).as_numpy_iterator()
    )
    assert len(rows) == expected
    assert sum(r[SAMPLE_WEIGHT].sum() for r in rows) == caser_dataset.num_train_targets(metadata, L, T)
    by_user = {}
    for r in rows:
        by_user.setdefault(int(r["user_index"]), []).append(np.concatenate([r[ITEM_IDS], r[LABELS]]))
    assert sorted(by_user) == list(range(1, len(histories) + 1))
    for token, items in histories.items():
        windows = by_user[int(users.index([token])[0])]
        c = len(items)
        if c >= L + T:  # all windows of L + T consecutive items, newest first
            want = [items[s : s + L + T] for s in range(c - L - T, -1, -1)]
        else:  # one window, left-padded
            want = [np.concatenate([np.full(L + T - c, PAD_ID), items])]
        np.testing.assert_array_equal(np.array(windows), np.array(want))
    short = [r for r in rows if (r[LABELS] == PAD_ID).any()]  # c = 1 and c = 2: padded targets carry no loss
    assert len(short) == 2 and all(np.array_equal(r[SAMPLE_WEIGHT], r[LABELS] != PAD_ID) for r in short)


def test_sample_negatives_is_uniform_over_the_items_not_trained_on():
    vocab_size = 12  # real ids 4..11
    draws = caser_dataset.sample_negatives(tf.constant([5, 6, 9, 6, 1]), [6000], tf.constant([3, 4], tf.int64), vocab_size).numpy()
    allowed = [4, 7, 8, 10, 11]
    values, counts = np.unique(draws, return_counts=True)
    assert values.tolist() == allowed
    assert np.all(np.abs(counts - 1200) < 150), counts


def test_negatives_never_in_the_history_and_redrawn_each_epoch(tmp_path):
    set_dir, metadata, vocab = _set(tmp_path, [12, 20, 30, 30, 5], n_items=36)
    users = caser_dataset.scan_users(set_dir, vocab.size)
    histories = {int(users.index([u])[0]): set(items.tolist()) for u, items in _train_histories(set_dir).items()}

    def epoch(e):
        ds = caser_dataset.train_windows(set_dir, users, L=3, T=2, neg_samples=4, vocabulary_size=vocab.size, seed=5, epoch=e)
        return [(int(r["user_index"]), r["negatives"]) for r in ds.as_numpy_iterator()]

    first, again, second = epoch(0), epoch(0), epoch(1)
    for user, negatives in first + second:
        assert negatives.shape == (4,)
        assert not set(negatives.tolist()) & histories[user]
        assert np.all((negatives >= NUM_RESERVED) & (negatives < vocab.size))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(first, again))  # a function of (seed, epoch)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(first, second))  # resampled every epoch


def test_train_batches_resume_mid_epoch(tmp_path):
    set_dir, metadata, vocab = _set(tmp_path, [12, 20, 30, 30, 15, 9])
    users = caser_dataset.scan_users(set_dir, vocab.size)
    kwargs = dict(L=3, T=2, neg_samples=2, vocabulary_size=vocab.size, batch_size=4, steps=6, seed=3, epoch=2)
    full = list(caser_dataset.train_dataset(set_dir, users, **kwargs).as_numpy_iterator())
    resumed = list(caser_dataset.train_dataset(set_dir, users, skip_steps=4, **kwargs).as_numpy_iterator())
    assert len(full) == 6 and len(resumed) == 2
    for a, b in zip(full[4:], resumed):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert full[0][ITEM_IDS].shape == (4, 3) and full[0]["negatives"].shape == (4, 2)


# ---------------------------------------------------------------- Caser's metric set
def test_metrics_equal_hand_values():
    # ids 0..3 reserved; real items 4..11. Descending scores: 11, 10, ..., 4.
    scores = np.array([[9.0, 9.0, 9.0, 9.0, 0, 1, 2, 3, 4, 5, 6, 7]])
    # history {11, 9} removed -> ranking 10, 8, 7, 6, 5, 4; targets {8, 4, 9}: 9 was removed but counts.
    m = caser_metrics.user_metrics(scores, holdout=[[8, 4, 9, 8]], history=[[11, 9, 0]])
    # hits at positions 2 (item 8) and 6 (item 4), |targets| = 3, 6 ranked items.
    assert m["prec@1"][0] == 0.0 and m["recall@1"][0] == 0.0
    assert m["prec@5"][0] == pytest.approx(1 / 5) and m["recall@5"][0] == pytest.approx(1 / 3)
    assert m["prec@10"][0] == pytest.approx(2 / 6)  # len(top-10) = 6 items left
    assert m["recall@10"][0] == pytest.approx(2 / 3)
    assert m["map"][0] == pytest.approx((1 / 2 + 2 / 6) / 3)


def _reference_user(scores, targets, history, ks, num_reserved=NUM_RESERVED):
    """evaluation.py's loop for one user (stable sort, reserved ids not ranked)."""
    ranking = [p for p in np.argsort(-scores, kind="stable") if p >= num_reserved and p not in set(history)]
    targets = set(t for t in targets if t != PAD_ID)
    out = {}
    for k in ks:
        hits = len(set(ranking[:k]) & targets)
        out[f"prec@{k}"], out[f"recall@{k}"] = hits / len(ranking[:k]), hits / len(targets)
    score, hits = 0.0, 0
    for i, p in enumerate(ranking):
        if p in targets:
            hits += 1
            score += hits / (i + 1)
    out["map"] = score / len(targets)
    return out


def test_metrics_match_the_reference_loop_with_ties_and_repeats():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=(40, 30)).astype("float32")  # many ties
    holdout = rng.integers(0, 30, size=(40, 4))
    holdout[:, 0] = rng.integers(4, 30, size=40)  # at least one real target per user
    history = rng.integers(0, 30, size=(40, 7))
    m = caser_metrics.user_metrics(scores, holdout, history)
    for b in range(40):
        ref = _reference_user(scores[b], holdout[b], history[b], caser_metrics.KS)
        for name, value in ref.items():
            assert m[name][b] == pytest.approx(value), (b, name)


# ---------------------------------------------------------------- bad input
def test_config_errors_name_the_flag(tmp_path):
    set_dir, metadata, vocab = _set(tmp_path, [5, 6, 9])  # training histories of 3, 4 and 7 items
    with pytest.raises(ConfigError, match=r"--max_len: .*L \+ T = 5 \+ 3 = 8 .*longest has 7"):
        CaserConfig(L=5, T=3).validate(metadata)
    with pytest.raises(ConfigError, match=r"--max_len: .*longer than every training history"):
        build_caser_job(CaserConfig(L=6, T=2), set_dir, metadata, vocab)
    CaserConfig(L=4, T=3).validate(metadata)
    with pytest.raises(ConfigError, match="--ac_conv: 'gelu'"):
        CaserConfig(ac_conv="gelu").validate()
    with pytest.raises(ConfigError, match="--dropout"):
        CaserConfig(drop_rate=1.0).validate()
    with pytest.raises(ConfigError, match="--nh"):
        CaserConfig(nv=0, nh=0).validate()


def test_a_user_who_trained_on_every_item_is_a_data_error(tmp_path):
    set_dir, metadata, vocab = _set(tmp_path, [12, 4], n_items=6)
    with pytest.raises(DataError, match=r"user 'u000' trained on all 6 items"):
        caser_dataset.scan_users(set_dir, vocab.size)


# ---------------------------------------------------------------- training on the shared loop, export
@pytest.fixture(scope="module")
def trained(small_world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("caser")
    set_dir = str(tmp / "set")
    convert.convert(str(small_world / "source.inter"), "auto", set_dir, num_shards=2)
    metadata, vocab = tfrecord.load_metadata(set_dir), Vocabulary.load(set_dir)
    cfg = CaserConfig(L=5, T=3, d=32, nv=4, nh=8, drop_rate=0.2, batch_size=256, learning_rate=3e-3, seed=1)
    keras.utils.set_random_seed(1)
    job = build_caser_job(cfg, set_dir, metadata, vocab)
    model_dir = str(tmp / "run")
    trainer = Trainer(job.task_factory, job.inputs, model_dir, TrainConfig(epochs=2, learning_rate=cfg.learning_rate, verbose=0))
    trainer.fit()
    return trainer, job, vocab, set_dir, model_dir, cfg


def test_learns_well_above_popularity(trained):
    trainer, job, vocab, *_ = trained
    test = trainer.evaluate("test")
    popularity = trainer.evaluate("test", PopularityScorer(vocab.counts))
    assert test["users"] == 800
    assert test["hr@10"] >= 2 * popularity["hr@10"], (test, popularity)
    metrics = job.caser_metrics(trainer.task, "test")
    assert metrics["users"] == 800 and set(metrics) == set(caser_metrics.metric_names()) | {"users"}
    assert metrics["recall@10"] > metrics["recall@5"] > 0 and 0 < metrics["map"] < 1


def test_eval_uses_the_user_and_serving_the_zero_user(trained):
    trainer, job, vocab, set_dir, *_ = trained
    batch = next(iter(job.inputs.evaluate("test", None)))
    assert np.all(batch["user_index"].numpy() >= 1)  # every loo user has training items
    with_user = trainer.task.eval_scores(batch).numpy()
    without = trainer.task.serve_scores(batch[ITEM_IDS], batch[LENGTHS]).numpy()
    assert not np.allclose(with_user, without)
    anonymous = dict(batch, user_index=tf.zeros_like(batch["user_index"]))
    np.testing.assert_allclose(trainer.task.eval_scores(anonymous).numpy(), without, rtol=1e-5, atol=1e-5)


def test_export_round_trip(trained):
    trainer, job, vocab, set_dir, model_dir, cfg = trained
    export_dir = export.export_model(trainer.task, vocab, model_dir, max_len=cfg.L, top_k=10)
    loaded = export.load_export(export_dir)
    assert isinstance(loaded.task, CaserTask) and loaded.task.backbone.get_config() == trainer.task.backbone.get_config()
    history = next(iter(_train_histories(set_dir).values()))[-8:]
    tokens = vocab.decode(history)
    served = tf.saved_model.load(export_dir).signatures["serving_default"](item_ids=tf.constant([[""] * 2 + tokens]))
    scores = trainer.task.serve_scores(tf.constant([history[-cfg.L :]]), tf.constant([cfg.L])).numpy()[0]
    scores[:NUM_RESERVED] = -np.inf
    expected = vocab.decode(np.argsort(-scores, kind="stable")[:10])
    assert [t.decode() for t in served["top_k_ids"].numpy()[0]] == expected
    assert [item for item, _ in loaded.recommend([tokens], top_k=10)[0]] == expected
