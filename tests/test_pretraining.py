"""End-to-end pretraining: it learns, it resumes, it exports what it trained."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from peterrec import export, pretraining
from peterrec.data import tfrecord
from peterrec.errors import ConfigError
from peterrec.training import Trainer, TrainConfig

TINY = dict(embedding_dim=32, dilations=(1, 4), batch_size=64, max_len=30, stride=10, verbose=0, num_shards=4)


def _config(tmp_path, data, name, **overrides):
    args = dict(TINY, data=str(data), tfrecord_dir=str(tmp_path / "tfr"), model_dir=str(tmp_path / name))
    args.update(overrides)
    return pretraining.PretrainConfig(**args)


def _shuffled_copy(src, dst, seed=0):
    """The same interactions with each user's order shuffled (timestamps re-assigned)."""
    lines = open(src).read().splitlines()
    header, rows = lines[0], [line.split("\t") for line in lines[1:]]
    rng = np.random.default_rng(seed)
    out, start = [header], 0
    while start < len(rows):
        end = start
        while end < len(rows) and rows[end][0] == rows[start][0]:
            end += 1
        items = [r[1] for r in rows[start:end]]
        times = [r[2] for r in rows[start:end]]
        for item, t in zip(rng.permutation(items), times):
            out.append(f"{rows[start][0]}\t{item}\t{t}")
        start = end
    open(dst, "w").write("\n".join(out) + "\n")
    return dst


@pytest.fixture(scope="module")
def trained(small_world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pretrain")
    cfg = _config(tmp, small_world / "source.inter", "run", epochs=6, learning_rate=3e-3, patience=2)
    return cfg, pretraining.run(cfg)


def test_learns_well_above_popularity_and_order_matters(trained, small_world, tmp_path):
    cfg, metrics = trained
    popularity = metrics["popularity"]["valid"]["hr@10"]
    assert metrics["valid"]["hr@10"] >= 2 * popularity, metrics
    assert metrics["test"]["hr@10"] >= 2 * metrics["popularity"]["test"]["hr@10"]
    shuffled = _shuffled_copy(small_world / "source.inter", tmp_path / "shuffled.inter")
    shuffled_metrics = pretraining.run(_config(tmp_path, shuffled, "shuffled", epochs=6, learning_rate=3e-3, patience=2))
    assert shuffled_metrics["valid"]["hr@10"] < 0.75 * metrics["valid"]["hr@10"], (shuffled_metrics["valid"], metrics["valid"])


def test_job_outputs(trained):
    cfg, metrics = trained
    model_dir = cfg.model_dir
    for name in ("export", "logs", "ckpt", "metrics.json", "curves.png", "job_config.json"):
        assert os.path.exists(os.path.join(model_dir, name)), name
    written = json.load(open(os.path.join(model_dir, "metrics.json")))
    for key in ("valid", "test", "popularity", "train_wall_seconds", "trained_positions_per_second", "total_params", "trainable_params"):
        assert key in written
    assert written["total_params"] == written["trainable_params"] > 0
    from tensorboard.backend.event_processing import event_accumulator

    tags = {}
    for sub in ("train", "validation"):
        acc = event_accumulator.EventAccumulator(os.path.join(model_dir, "logs", sub), size_guidance={"tensors": 0})
        acc.Reload()
        tags[sub] = acc.Tags()
    assert {"epoch_loss", "epoch_learning_rate", "epoch_positions_per_second"} <= set(tags["train"]["tensors"])
    assert {"epoch_mrr@10", "epoch_hr@10", "epoch_ndcg@10"} <= set(tags["validation"]["tensors"])
    assert tags["train"]["graph"]  # the train-step graph (tf.summary.graph)
    config = json.load(open(os.path.join(metrics["export_dir"], "config.json")))
    assert config["vocab_hash"] == metrics["data"]["vocab_hash"]
    assert config["reserved_ids"] == {"pad": 0, "oov": 1, "mask": 2, "sep": 3}


def test_saved_model_matches_the_keras_model(trained, small_world):
    cfg, metrics = trained
    loaded = export.load_export(cfg.model_dir)
    served = tf.saved_model.load(metrics["export_dir"])
    lines = open(small_world / "source.inter").read().splitlines()[1:200]
    seq = [line.split("\t")[1] for line in lines if line.startswith(lines[0].split("\t")[0] + "\t")]
    rows = [seq[:12] + [""] * 3, [""] * 3 + seq[:12], ["never-seen-item"] + seq[:5] + [""] * 9]
    out = served.signatures["serving_default"](item_ids=tf.constant(rows))
    ids, scores = out["top_k_ids"].numpy(), out["top_k_scores"].numpy()
    # Padding side does not matter.
    np.testing.assert_array_equal(ids[0], ids[1])
    # Same top-k as the in-memory Keras model.
    encoded, _ = loaded.vocab.encode(seq[:12])
    logits = loaded.task.score_last(tf.constant([encoded], tf.int32), tf.constant([12]))[0].numpy()
    logits[:4] = -np.inf
    expected = np.argsort(-logits, kind="stable")[: ids.shape[1]]
    assert [t.decode() for t in ids[0][:10]] == loaded.vocab.decode(expected[:10])
    np.testing.assert_allclose(scores[0], logits[expected], rtol=1e-4, atol=1e-4)
    assert not any(t.decode().startswith("[") for t in ids.ravel())  # reserved ids never served
    excl = served.signatures["top_k_exclude_seen"](item_ids=tf.constant(rows[:1]))["top_k_ids"].numpy()[0]
    assert not set(t.decode() for t in excl) & set(seq[:12])
    assert [i for i, _ in loaded.recommend([seq[:12]], top_k=5)[0]] == [t.decode() for t in ids[0][:5]]


def test_resume_mid_epoch_continues_the_global_step(mini_world, tmp_path):
    cfg = _config(tmp_path, mini_world / "source.inter", "resume", epochs=2, checkpoint_every_steps=3, batch_size=16)
    set_dir, metadata, vocab = pretraining.prepare_data(cfg)
    inputs = pretraining.build_inputs(set_dir, metadata, cfg)
    steps = inputs.steps_per_epoch
    assert steps > 6

    class Interrupt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 4:
                raise KeyboardInterrupt

    train_cfg = TrainConfig(epochs=2, checkpoint_every_steps=3, verbose=0)
    first = Trainer(lambda: pretraining.build_task(cfg, vocab), inputs, cfg.model_dir, train_cfg, callbacks=[Interrupt()])
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    assert int(first.global_step.numpy()) == 5
    second = Trainer(lambda: pretraining.build_task(cfg, vocab), inputs, cfg.model_dir, train_cfg)
    assert second.restore() is not None and int(second.global_step.numpy()) == 3
    saved = [w.numpy().copy() for w in second.task.weights]
    result = second.fit()
    assert result.global_step == 2 * steps  # the 3 finished steps are not trained again
    assert result.epochs_run == 2
    assert any(not np.array_equal(a, w.numpy()) for a, w in zip(saved, second.task.weights))


def test_rerun_with_more_epochs_resumes(mini_world, tmp_path):
    cfg = _config(tmp_path, mini_world / "source.inter", "more", epochs=1)
    first = pretraining.run(cfg)
    cfg.epochs = 2
    second = pretraining.run(cfg)
    assert second["global_step"] == 2 * first["global_step"]
    assert second["epochs_run"] == 2
    assert len(export.versions(os.path.join(cfg.model_dir, "export"))) == 2  # the first export stays valid


def test_incompatible_model_dir_is_refused(mini_world, tmp_path):
    pretraining.run(_config(tmp_path, mini_world / "source.inter", "same", epochs=1))
    with pytest.raises(ConfigError, match="embedding_dim"):
        pretraining.run(_config(tmp_path, mini_world / "source.inter", "same", epochs=1, embedding_dim=16))


@pytest.mark.parametrize(
    "overrides, flag",
    [
        (dict(stride=40), "--stride"),
        (dict(loss="sampled_softmax", jit_compile=True), "jit_compile"),
        (dict(loss="sampled_softmax", strategy="tpu"), r"--loss sampled_softmax cannot be combined with --strategy tpu: .*no XLA kernel"),
        (dict(backbone="grec", loss="sampled_softmax", strategy="tpu"), "--strategy tpu"),
        (dict(backbone="bert"), "--backbone"),
        (dict(epochs=0), "--epochs"),
    ],
)
def test_bad_settings_name_the_flag(tmp_path, overrides, flag):
    with pytest.raises(ConfigError, match=flag):
        pretraining.run(_config(tmp_path, "unused.inter", "bad", **overrides))
    assert not os.path.exists(tmp_path / "bad")


def test_sampled_softmax_and_pad_as_item_train(mini_world, tmp_path):
    both = dict(loss="sampled_softmax", pad_as_item=True)  # PAD labels: expected count must stay > 0 (finite log-Q)
    for name, overrides in {"sampled": dict(loss="sampled_softmax"), "padded": dict(pad_as_item=True), "both": both}.items():
        metrics = pretraining.run(_config(tmp_path, mini_world / "source.inter", name, epochs=1, **overrides))
        assert np.isfinite(metrics["valid"]["mrr@10"]) and metrics["global_step"] > 0


def test_cli_writes_the_outputs_and_fails_cleanly(mini_world, tmp_path, cli):
    cmd = ["--data", str(mini_world / "source.inter"), "--epochs", "1",
           "--embedding_dim", "8", "--dilations", "1,2", "--model_dir", str(tmp_path / "cli"), "--tfrecord_dir", str(tmp_path / "tfr")]
    done = cli("pipelines.pretrain", cmd)
    assert done.returncode == 0, done.stderr[-2000:]
    assert '"export_dir"' in done.stdout
    assert tfrecord.load_metadata(next((tmp_path / "tfr").iterdir()))["vocab_size"] > 100
    again = cli("pipelines.pretrain", cmd[:-4] + ["--embedding_dim", "16", "--model_dir", str(tmp_path / "cli"), "--tfrecord_dir", str(tmp_path / "tfr")])
    assert again.returncode == 2 and "different configuration" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.parametrize("backbone", ["nextitnet", "sasrec"])
def test_jit_compiled_training_equals_eager_training(tiny_inter, tmp_path, backbone):
    """The Trainer's XLA-compiled step (``--jit_compile``) trains the same weights as the eager-graph step."""
    settings = dict(embedding_dim=8, max_len=10, stride=5, batch_size=32, verbose=0, num_shards=2, learning_rate=3e-3)
    settings |= dict(dilations=(1, 2), dropout=0.0) if backbone == "nextitnet" else dict(num_layers=1, num_heads=1, hidden_dropout=0.0, attn_dropout=0.0)
    cfg = pretraining.PretrainConfig(backbone=backbone, data=str(tiny_inter), tfrecord_dir=str(tmp_path / "tfr"), model_dir=str(tmp_path / "x"),
                                     **settings)
    set_dir, metadata, vocab = pretraining.prepare_data(cfg)
    inputs = pretraining.build_inputs(set_dir, metadata, cfg)
    runs = {}
    for jit in (False, True):
        keras.utils.set_random_seed(0)
        train = TrainConfig(epochs=2, jit_compile=jit, checkpoint_every_steps=0, verbose=0, patience=0, learning_rate=3e-3)
        trainer = Trainer(lambda: pretraining.build_task(cfg, vocab), inputs, str(tmp_path / f"jit{jit}"), train)
        result = trainer.fit()
        runs[jit] = ({w.path: w.numpy() for w in trainer.task.weights}, [row["loss"] for row in result.history], result.global_step)
    (eager, eager_losses, eager_steps), (xla, xla_losses, xla_steps) = runs[False], runs[True]
    assert xla_steps == eager_steps > 4 and eager.keys() == xla.keys()
    np.testing.assert_allclose(xla_losses, eager_losses, rtol=1e-4)
    keras.utils.set_random_seed(0)
    start = {w.path: w.numpy() for w in pretraining.build_task(cfg, vocab).weights}
    for path, value in eager.items():
        np.testing.assert_allclose(xla[path], value, rtol=1e-3, atol=1e-5, err_msg=path)
    # (the runs trained: equal, not equally untouched; an attention key bias gets no gradient, softmax ignores it)
    still = {path for path in eager if np.abs(eager[path] - start[path]).max() <= 1e-3}
    assert still <= {"block_0/attention/key/bias"}, still
