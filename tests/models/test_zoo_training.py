"""Zoo models through the one job (pretraining.run = pipelines.train): learning, export, job config, bad input."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from peterrec import export, pretraining
from peterrec.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = dict(embedding_dim=32, batch_size=64, max_len=30, stride=10, verbose=0, num_shards=4, patience=5)
# RecBole's defaults otherwise (dropouts included); a few epochs of the small world each.
SETTINGS = {
    "sasrec": dict(epochs=2),
    "narm": dict(epochs=2, learning_rate=3e-3, hidden_size=32),
    "gru4rec": dict(epochs=3, learning_rate=3e-3, hidden_size=32),
    "stamp": dict(epochs=4, learning_rate=2e-2),  # RecBole's N(0, 0.002) embeddings start slowly at lr 1e-3
}


def _config(tmp, data, name, **overrides):
    args = dict(TINY, data=str(data), tfrecord_dir=str(tmp / "tfr"), model_dir=str(tmp / name))
    args.update(overrides)
    return pretraining.PretrainConfig(**args)


@pytest.fixture(scope="module")
def trained(small_world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zoo")
    runs = {}
    for model, settings in SETTINGS.items():
        cfg = _config(tmp, small_world / "source.inter", model, backbone=model, **settings)
        runs[model] = (cfg, pretraining.run(cfg))
    return runs


@pytest.mark.parametrize("model", SETTINGS)
def test_learns_at_least_twice_popularity(trained, model):
    _, metrics = trained[model]
    for split in ("valid", "test"):
        assert metrics[split]["hr@10"] >= 2 * metrics["popularity"][split]["hr@10"], (model, split, metrics[split], metrics["popularity"])


@pytest.mark.parametrize("model", SETTINGS)
def test_export_serves_what_the_keras_model_ranks(trained, small_world, model):
    cfg, metrics = trained[model]
    loaded = export.load_export(cfg.model_dir)
    assert loaded.config["backbone_name"] == model and loaded.config["task"]["config"]["output"] == "tied"
    served = tf.saved_model.load(metrics["export_dir"])
    lines = open(small_world / "source.inter").read().splitlines()[1:300]
    user = lines[0].split("\t")[0]
    seq = [line.split("\t")[1] for line in lines if line.startswith(user + "\t")][:12]
    rows = [seq + [""] * 3, [""] * 3 + seq]
    out = served.signatures["serving_default"](item_ids=tf.constant(rows))
    ids, scores = out["top_k_ids"].numpy(), out["top_k_scores"].numpy()
    np.testing.assert_array_equal(ids[0], ids[1])  # padding side does not matter
    encoded, _ = loaded.vocab.encode(seq)
    logits = loaded.task.score_last(tf.constant([encoded], tf.int32), tf.constant([len(seq)]))[0].numpy()
    logits[:4] = -np.inf
    expected = np.argsort(-logits, kind="stable")[:10]
    assert [t.decode() for t in ids[0][:10]] == loaded.vocab.decode(expected)
    np.testing.assert_allclose(scores[0][:10], logits[expected], rtol=1e-4, atol=1e-5)


def test_job_config_keeps_each_models_own_settings(trained):
    cfg, _ = trained["sasrec"]
    record = json.load(open(os.path.join(cfg.model_dir, "job_config.json")))
    assert record["backbone"] == "sasrec" and record["output_layer"] == "tied"
    assert {k: record[k] for k in ("num_layers", "num_heads", "inner_size", "hidden_dropout", "attn_dropout", "pre_ln")} == dict(
        num_layers=2, num_heads=2, inner_size=256, hidden_dropout=0.5, attn_dropout=0.5, pre_ln=False
    )
    for key in ("dilations", "kernel_size", "dropout", "pad_as_item", "hidden_size", "embedding_dropout", "mask_prob"):
        assert key not in record
    nextitnet = pretraining.job_record(pretraining.PretrainConfig())
    for key in (*pretraining.ZOO_FIELDS, "output_layer"):
        assert key not in nextitnet  # runs from before the zoo still resume
    assert pretraining.job_record(pretraining.PretrainConfig(output_layer="tied"))["output_layer"] == "tied"


def test_model_defaults_are_recboles():
    settings = lambda model: pretraining.PretrainConfig(backbone=model).model_settings()  # noqa: E731
    assert settings("narm") == dict(hidden_size=128, num_layers=1, embedding_dropout=0.25, hidden_dropout=0.5)
    assert settings("gru4rec") == dict(hidden_size=128, num_layers=1, embedding_dropout=0.3)
    assert settings("stamp") == {} and settings("nextitnet") == {}
    assert pretraining.PretrainConfig(backbone="sasrec", num_heads=4).model_settings()["num_heads"] == 4
    assert pretraining.PretrainConfig(backbone="stamp").resolved_model_dir() == os.path.join("checkpoints", "train-stamp")
    assert pretraining.PretrainConfig(backbone="stamp").resolved_output() == "tied"
    assert pretraining.PretrainConfig().resolved_output() == "dense"


@pytest.mark.parametrize(
    "overrides, flag",
    [
        (dict(backbone="narm", num_heads=2), "--num_heads: is not a narm setting"),
        (dict(backbone="sasrec", num_heads=3), "--num_heads: must divide"),
        (dict(backbone="sasrec", dropout=0.2), "--dropout: is a NextItNet setting"),
        (dict(backbone="gru4rec", pad_as_item=True), "--pad_as_item"),
        (dict(backbone="sasrec", hidden_dropout=1.0), "--hidden_dropout"),
        (dict(backbone="narm", num_layers=0), "--num_layers"),
        (dict(backbone="nextitnet", hidden_size=16), "--hidden_size: is a setting of the zoo models"),
        (dict(backbone="sasrec", max_len=1, stride=1), "--max_len: must be >= 2 for sasrec"),
        (dict(backbone="grec", positional_embedding=True, output_layer="tied"), "--output_layer"),
        (dict(backbone="stamp", output_layer="bilinear"), "--output_layer"),
        (dict(backbone="stamp", loss="sampled_softmax", jit_compile=True), "jit_compile"),
    ],
)
def test_bad_settings_name_the_flag(tmp_path, overrides, flag):
    with pytest.raises(ConfigError, match=flag):
        pretraining.run(_config(tmp_path, "unused.inter", "bad", **overrides))
    assert not os.path.exists(tmp_path / "bad")


def test_cli_trains_into_checkpoints_train_model(mini_world, tmp_path, cli):
    done = cli("pipelines.train", ["--model", "stamp", "--data", str(mini_world / "source.inter"), "--epochs", "1", "--embedding_dim", "8",
                 "--max_len", "20", "--num_shards", "2"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    model_dir = tmp_path / "checkpoints" / "train-stamp"
    for name in ("export", "logs", "ckpt", "metrics.json", "job_config.json"):
        assert (model_dir / name).exists(), name
    assert json.loads(done.stdout[done.stdout.index("{"):])["model_dir"] == os.path.join("checkpoints", "train-stamp")


@pytest.mark.parametrize("model", ["atrank", "miir"])
def test_cli_trains_side_information_models(mini_world, tmp_path, model, cli):
    done = cli("pipelines.train", ["--model", model, "--data", str(mini_world / "source.inter"), "--item_data", str(mini_world / "source.item"),
                 "--epochs", "1", "--embedding_dim", "8", "--batch_size", "256", "--max_len", "10", "--num_shards", "2"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    model_dir = tmp_path / "checkpoints" / f"train-{model}"
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["test"]["users"] == 200 and (model_dir / "export").is_dir()


def test_cli_trains_caser(mini_world, tmp_path, cli):
    done = cli("pipelines.train", ["--model", "caser", "--data", str(mini_world / "source.inter"), "--epochs", "1", "--embedding_dim", "8",
                 "--nh", "2", "--num_shards", "2"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "checkpoints" / "train-caser" / "metrics.json").read_text())
    caser_test = metrics["caser_metrics"]["test"]
    assert {"map", "prec@1", "recall@10"} <= set(caser_test), caser_test
    assert caser_test["users"] > 0 and all(0.0 <= caser_test[k] <= 1.0 for k in ("map", "prec@1", "recall@10")), caser_test
    assert (tmp_path / "checkpoints" / "train-caser" / "export").is_dir()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "bert"], "--model: 'bert' is not one of nextitnet, grec, sasrec, narm, stamp, gru4rec, caser"),
        (["--model", "sasrec", "--max_len", "1", "--stride", "1"], "--max_len: must be >= 2 for sasrec"),
        (["--model", "caser", "--max_len", "400", "--epochs", "1"], "--max_len: Caser windows of L + T = 400 + 3"),
    ],
)
def test_cli_bad_model_or_max_len_is_one_clear_error(tmp_path, args, message, cli):
    done = cli("pipelines.train", [*args, "--model_dir", str(tmp_path / "bad")], cwd=REPO)
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "bad").exists()
