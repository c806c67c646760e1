"""The side-information pipelines: pretrain --backbone miir -> train --model miir --pretrained, finetune refusing MIIR,
flag defaults, bad --item_data / --item_fields, multi-behaviour ATRank from the CLI."""

import json
import os

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MIIR = ["--epochs", "1", "--embedding_dim", "8", "--num_layers", "1", "--num_heads", "2", "--inner_size", "16",
             "--batch_size", "128", "--max_len", "10", "--num_shards", "2"]


def _error_line(done):
    """The one ``error: ...`` line a pipeline prints for bad input (exit status 2, no traceback)."""
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, done.stderr[-2000:]
    return lines[0]


def _weights(export_dir):
    from peterrec import export

    return {w.path: w.numpy() for w in export.load_export(export_dir).backbone.weights}


def test_pretrain_miir_defaults_without_flags(cli):
    """Zero extra flags: the embedded default data and side information, stage mii, checkpoints/pretrain-miir."""
    code = ("import dataclasses, json, sys; from pipelines import pretrain; pretrain.FLAGS(['pretrain', '--backbone', 'miir']); "
            "cfg = pretrain.miir_config(); print(json.dumps(dataclasses.asdict(cfg) | {'dir': cfg.resolved_model_dir()}))")
    done = cli.code(code, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    cfg = json.loads(done.stdout.strip().splitlines()[-1])
    assert cfg["data"] == "Data/synthetic/source.inter" and cfg["item_data"] == "Data/synthetic/source.item"
    assert cfg["stage"] == "mii" and cfg["dir"] == os.path.join("checkpoints", "pretrain-miir")
    # MIIR's own settings (the original's, except fidelity m11), not the shared flags' defaults (batch 64, 10 epochs, mask_prob 0.3, max_len 50);
    # MII pretraining runs every epoch (patience = epochs)
    assert (cfg["learning_rate"], cfg["batch_size"], cfg["epochs"], cfg["patience"], cfg["mask_prob"], cfg["max_len"], cfg["embedding_dim"],
            cfg["dropout"]) == (1e-3, 128, 8, 8, 0.5, 20, 64, 0.1)
    assert os.path.isfile(os.path.join(REPO, cfg["data"])) and os.path.isfile(os.path.join(REPO, cfg["item_data"]))


def test_pretrain_miir_then_train_from_it_and_finetune_refuses_it(mini_world, tmp_path, cli):
    data = ["--data", str(mini_world / "source.inter"), "--item_data", str(mini_world / "source.item")]
    done = cli("pipelines.pretrain", ["--backbone", "miir", *data, *TINY_MIIR], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    mii_dir = tmp_path / "checkpoints" / "pretrain-miir"
    summary = json.loads(done.stdout[done.stdout.index("\n{\n") + 1:])
    assert summary["model_dir"] == os.path.join("checkpoints", "pretrain-miir")
    metrics = json.loads((mii_dir / "metrics.json").read_text())
    assert {"hr@10", "mrr@10", "sampled_hr@10", "sampled_mrr", "sampled_auc"} <= set(metrics["test"]) and metrics["test"]["users"] == 200
    assert json.loads((mii_dir / "job_config.json").read_text())["stage"] == "mii"
    pretrained = _weights(str(mii_dir / "export"))

    # train --pretrained loads that export in full: with a learning rate of 1e-12 the exported weights are the pretrained ones
    done = cli("pipelines.train", ["--model", "miir", "--pretrained", os.path.join("checkpoints", "pretrain-miir"), *data, *TINY_MIIR,
                          "--learning_rate", "1e-12"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    rec_dir = tmp_path / "checkpoints" / "train-miir"
    rec = json.loads((rec_dir / "metrics.json").read_text())
    assert json.loads((rec_dir / "job_config.json").read_text())["stage"] == "rec" and rec["test"]["users"] == 200
    finetuned = _weights(str(rec_dir / "export"))
    assert finetuned.keys() == pretrained.keys() and any("item_embedding" in k for k in finetuned)
    for name, value in pretrained.items():
        np.testing.assert_allclose(finetuned[name], value, atol=1e-7, err_msg=name)

    # other item features than the pretraining's: one clear error
    line = _error_line(cli("pipelines.train", ["--model", "miir", "--pretrained", str(mii_dir), *data, *TINY_MIIR, "--discard_share", "0",
                                      "--model_dir", str(tmp_path / "other")], cwd=tmp_path))
    assert "other item features" in line

    # pipelines.finetune is PeterRec's: it reads the backbone type from the export and refuses MIIR
    line = _error_line(cli("pipelines.finetune", ["--pretrained", str(mii_dir / "export"), "--data", str(mini_world / "target.inter")], cwd=tmp_path))
    assert "'MIIR' cannot be patched" in line
    assert not (tmp_path / "checkpoints" / "finetune-miir-serial-peterrec-items").exists()


@pytest.mark.parametrize("module,model", [("pretrain", ["--backbone", "miir"]), ("train", ["--model", "atrank"])])
def test_bad_item_data_and_fields_give_one_error(mini_world, tmp_path, module, model, cli):
    data = ["--data", str(mini_world / "source.inter"), "--tfrecord_dir", str(tmp_path / "tfr"), "--num_shards", "1"]
    line = _error_line(cli(f"pipelines.{module}", [*model, *data, "--item_data", str(tmp_path / "absent.item")], cwd=tmp_path))
    assert f"{tmp_path / 'absent.item'}: no such side-information file (--item_data)" in line
    line = _error_line(cli(f"pipelines.{module}", [*model, *data, "--item_data", str(mini_world / "source.item"), "--item_fields", "category,colour"], cwd=tmp_path))
    assert "--item_fields: unknown field(s) 'colour'" in line and "category, brand, price" in line
    assert not (tmp_path / "checkpoints").exists()


def test_train_multi_behaviour_atrank(tmp_path, cli):
    """--behaviour_field from the CLI on a tiny behaviour file (learning is tested in tests/models/test_atrank.py)."""
    kinds = ("click", "click", "like", "click", "purchase")
    lines = ["user_id:token\titem_id:token\ttimestamp:float\tbehaviour:token"]
    lines += [f"u{u}\ti{(u * 3 + t) % 25}\t{t * 86400}\t{kinds[(u + t) % 5]}" for u in range(30) for t in range(6)]
    (tmp_path / "b.inter").write_text("\n".join(lines) + "\n")
    (tmp_path / "b.item").write_text("item_id:token\tcategory:token\n" + "".join(f"i{k}\tc{k % 4}\n" for k in range(0, 25, 2)))
    data = ["--data", str(tmp_path / "b.inter"), "--item_data", str(tmp_path / "b.item"), "--num_shards", "1"]
    line = _error_line(cli("pipelines.train", ["--model", "atrank", *data, "--behaviour_field", "action"], cwd=tmp_path))
    assert line.endswith(f"--behaviour_field: {tmp_path / 'b.inter'} has no column 'action' (its columns: user_id, item_id, timestamp, behaviour)")
    done = cli("pipelines.train", ["--model", "atrank", *data, "--behaviour_field", "behaviour", "--candidate_behaviour", "like", "--epochs", "1",
                          "--embedding_dim", "8", "--num_heads", "2", "--batch_size", "16"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    model_dir = tmp_path / "checkpoints" / "train-atrank"
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["test"]["users"] == 30 and 0.0 <= metrics["test"]["auc"] <= 1.0
    record = json.loads((model_dir / "job_config.json").read_text())
    assert record["behaviour_types"] == ["click", "like", "purchase"] and record["candidate_behaviour_type"] == "like"
    from peterrec import export

    loaded = export.load_export(str(model_dir / "export"))
    assert loaded.backbone.behaviours == ["click", "like", "purchase"] and loaded.backbone.candidate_behaviour == 1
    assert len(loaded.recommend([["i3", "i6"]], top_k=3)[0]) == 3
