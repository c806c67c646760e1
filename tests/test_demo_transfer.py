"""The official PeterRec demo: TF1 checkpoints imported, then finetuned (PeterRec serial and parallel on both backbones, and baselines)."""

import json
import os

import numpy as np
import pytest

from peterrec import finetuning
from peterrec.tf1 import export_tf1_checkpoint

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "fixtures", "peterrec_demo")
pytestmark = pytest.mark.skipif(not os.path.isdir(DEMO), reason="../shared/fixtures/peterrec_demo is absent")
PRETRAIN_CSV = os.path.join(DEMO, "Session", "history_sequences_20181014_fajie_transfer_pretrain_small.csv")
FINETUNE_CSV = os.path.join(DEMO, "Session", "history_sequences_20181014_fajie_transfer_finetune_small.csv")
CHECKPOINTS = {"nextitnet": "model_nextitnet_transfer_pretrain.ckpt", "grec": "model_nextitnet_cloze"}


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    exports = {}
    for backbone, name in CHECKPOINTS.items():
        exports[backbone], _ = export_tf1_checkpoint(os.path.join(DEMO, "Models", name), PRETRAIN_CSV, backbone, str(tmp / backbone))
    return exports, tmp


def _run(imported, backbone, mode, insertion="serial"):
    exports, tmp = imported
    cfg = finetuning.FinetuneConfig(
        pretrained=exports[backbone], data=FINETUNE_CSV, tfrecord_dir=str(tmp / "tfr"), model_dir=str(tmp / f"{backbone}-{mode}-{insertion}"),
        finetune_mode=mode, insertion=insertion, epochs=1, batch_size=4, valid_fraction=0.2, test_fraction=0.2, verbose=0, num_shards=2,
    )
    return finetuning.run(cfg)


# PeterRec on each imported backbone (GRec serial here, NextItNet parallel through the command line below) and two
# baselines that read the imported weights: a mode trains the same weights whatever export it loads (test_finetuning
# checks which weights each mode moves, and both insertions), so the demo checks that the TF1 import feeds them, not
# every mode on every backbone.
COMBINATIONS = [("grec", "peterrec", "serial"), ("nextitnet", "finecls", "serial"), ("grec", "fineall", "serial")]


@pytest.mark.parametrize("backbone, mode, insertion", COMBINATIONS)
def test_imported_checkpoints_finetune_on_the_demo(imported, backbone, mode, insertion):
    metrics = _run(imported, backbone, mode, insertion)
    assert metrics["source_oov_share"] == 0.0  # the demo's source ids are all in the imported vocabulary
    assert np.isfinite(metrics["test"]["mrr@5"]) and metrics["test"]["users"] > 0
    assert os.path.isdir(metrics["export_dir"]) and os.path.isdir(metrics["patch_dir"])
    if mode == "peterrec":
        assert metrics["trainable_params"] < 0.25 * metrics["pretrained_backbone_params"]
    if mode == "finecls":
        assert metrics["trainable_params"] == 64 + metrics["data"]["target_vocab_size"] * 64


def test_cli_on_the_demo(imported, cli):
    exports, tmp = imported
    done = cli("pipelines.finetune", [
        "--pretrained", exports["nextitnet"], "--data", FINETUNE_CSV, "--insertion", "parallel", "--epochs", "1", "--batch_size", "4",
        "--valid_fraction", "0.2", "--test_fraction", "0.2", "--model_dir", str(tmp / "cli"), "--tfrecord_dir", str(tmp / "tfr")])
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout[done.stdout.index("{"):])["patch_dir"].endswith("patch/1")
    metrics = json.load(open(tmp / "cli" / "metrics.json"))
    assert os.path.isdir(metrics["export_dir"]) and metrics["source_oov_share"] == 0.0 and metrics["insertion"] == "parallel" and metrics["test"]["users"] > 0
    assert metrics["trainable_params"] < 0.25 * metrics["pretrained_backbone_params"]
