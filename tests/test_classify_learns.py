"""Profile classification learns on small real-shaped data with the zero-flag settings.

The world here is not the synthetic generator's: 500 users watch Zipf-popular items of two
catalogues (A: ids 0-149, B: 150-299) in proportions set by a per-user taste; the label is whether
the user watched mostly catalogue A, skewed so that the majority class holds about 70 % of the
users. A user's label is therefore readable from which items they have seen, and only from that.
Before the fix the run selected its first epoch (validation accuracy tied at the majority value
and patience stopped it) and predicted the majority class for every user.
"""

import json
import os

import numpy as np
import pytest

from peterrec import finetuning, pretraining

TINY_PRE = dict(embedding_dim=16, dilations=(1, 4), batch_size=64, max_len=30, stride=10, verbose=0, num_shards=2, epochs=8,
                learning_rate=5e-3)


@pytest.fixture(scope="module")
def taste_world(tmp_path_factory):
    rng = np.random.default_rng(3)
    out = tmp_path_factory.mktemp("taste")
    zipf = 1.0 / np.arange(1, 151) ** 0.8
    zipf /= zipf.sum()
    inter, labels = ["user_id:token\titem_id:token\ttimestamp:float"], ["user_id:token\tlabel:token"]
    for u in range(500):
        share_a = rng.beta(0.5, 0.25)  # mostly one catalogue; P(share_a > 0.5) ~ 0.7
        for t in range(int(rng.integers(8, 30))):
            catalogue = 0 if rng.random() < share_a else 150
            inter.append(f"user{u}\tmovie{catalogue + rng.choice(150, p=zipf)}\t{t}")
        labels.append(f"user{u}\t{'a_fan' if share_a > 0.5 else 'b_fan'}")
    (out / "source.inter").write_text("\n".join(inter) + "\n")
    (out / "profile.inter").write_text("\n".join(labels) + "\n")
    cfg = pretraining.PretrainConfig(data=str(out / "source.inter"), tfrecord_dir=str(out / "tfr"), model_dir=str(out / "pre"), **TINY_PRE)
    return out, pretraining.run(cfg)["export_dir"]


def _classify(world, mode, **overrides):
    out, export_dir = world
    cfg = finetuning.FinetuneConfig(pretrained=export_dir, data=str(out / "source.inter"), targets=str(out / "profile.inter"),
                                    task="classify", finetune_mode=mode, tfrecord_dir=str(out / "tfr"), model_dir=str(out / mode),
                                    verbose=0, **overrides)  # every other training setting at its default
    return finetuning.run(cfg)


def test_zero_flag_classification_beats_the_majority_class(taste_world):
    peterrec = _classify(taste_world, "peterrec")
    test, majority = peterrec["test"], peterrec["popularity"]["test"]["hr@1"]
    assert 0.5 < majority < 0.9  # the majority class of the 50 test users
    assert test["accuracy"] >= majority + 0.1, (test, majority)
    assert test["macro_f1"] > 0.7  # both classes are predicted, not only the majority one
    # selected on validation log-loss (the lowest epoch of history.jsonl), not on an accuracy tie at epoch 1
    history = [json.loads(line) for line in open(os.path.join(taste_world[0], "peterrec", "history.jsonl"))]
    losses = [row["val_log_loss"] for row in history]
    assert peterrec["selected_epoch"] == 1 + int(np.argmin(losses)) > 1
    assert "log_loss" in peterrec["valid"] and peterrec["valid"]["log_loss"] < np.log(2)
    from peterrec.evaluation import evaluate_export  # re-evaluating the export reproduces the job's test metrics

    again = evaluate_export(os.path.join(taste_world[0], "peterrec"), tfrecord_dir=str(taste_world[0] / "tfr"))["test"]
    for key in ("accuracy", "macro_f1", "log_loss"):
        assert abs(again[key] - test[key]) < 1e-5, key
    scratch = _classify(taste_world, "scratch", epochs=2)  # another model: other predictions
    assert scratch["test"]["accuracy"] != test["accuracy"] or scratch["test"]["log_loss"] != test["log_loss"]
