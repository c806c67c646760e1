"""The worked example of docs/adding_a_model.md: BERT4Rec added as recipes/bert4rec.py + backbones/bert4rec.py only.

It must be bidirectional with exact padding semantics, be dispatched by every entry point through the recipe
registry (and refused where a causal model is needed), learn the small world well above popularity through
``pipelines.train --model bert4rec``, and its export must serve and re-evaluate like every model's.
"""

import json
import os

import numpy as np
import pytest

from peterrec import export, recipes
from peterrec.backbones.bert4rec import BERT4RecBackbone
from peterrec.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_encoder_is_bidirectional_and_padding_exact():
    backbone = BERT4RecBackbone(vocabulary_size=40, embedding_dim=16, max_positions=8, num_layers=2, num_heads=2, inner_size=32)
    ids = np.array([[5, 6, 7, 8, 0, 0]], dtype="int32")
    out = backbone(ids).numpy()
    assert out.shape == (1, 6, 16)
    np.testing.assert_array_equal(out[0, 4:], 0.0)  # padded positions are 0
    later = backbone(np.array([[5, 6, 7, 9, 0, 0]], dtype="int32")).numpy()
    assert np.abs(later[0, 0] - out[0, 0]).max() > 1e-4  # position 0 sees a later item: not causal
    more_padding = backbone(np.array([[5, 6, 7, 8, 0, 0, 0, 0]], dtype="int32")).numpy()
    np.testing.assert_allclose(more_padding[0, :4], out[0, :4], atol=1e-5)  # padding keys are masked out
    rebuilt = BERT4RecBackbone.from_config(backbone.get_config())
    rebuilt.set_weights(backbone.get_weights())
    np.testing.assert_allclose(rebuilt(ids).numpy(), out, atol=1e-6)


def test_registered_with_its_capabilities_and_refused_as_casr_model():
    from peterrec.augment import casr
    from peterrec.recipes import casr as casr_recipe

    recipe = recipes.get("bert4rec")
    assert (recipe.layout, recipe.causal, recipe.pipeline, recipe.family) == ("cloze", False, "train", "zoo")
    assert "bert4rec" in recipes.names(layout="cloze") and "bert4rec" not in casr.causal_models()
    assert recipe.config({}).mask_prob == 0.2 and recipe.config({"mask_prob": 0.4}).mask_prob == 0.4
    with pytest.raises(ConfigError, match="--anchor_model: 'bert4rec' is not one of"):
        casr_recipe.CASRConfig(anchor_model="bert4rec", sampler_model="narm").validate()
    with pytest.raises(ConfigError, match="--model: 'bert4rex' is not one of .*bert4rec"):
        recipes.get("bert4rex")


@pytest.fixture(scope="module")
def trained(small_world, tmp_path_factory, cli):
    tmp = tmp_path_factory.mktemp("bert4rec")
    model_dir = tmp / "run"
    args = [
        "--model", "bert4rec", "--data", str(small_world / "source.inter"),
        "--tfrecord_dir", str(tmp / "tfr"), "--model_dir", str(model_dir), "--epochs", "8", "--embedding_dim", "32",
        "--max_len", "30", "--num_shards", "2", "--hidden_dropout", "0.1", "--attn_dropout", "0.1", "--learning_rate", "3e-3",
        "--verbose", "0",
    ]
    done = cli("pipelines.train", args, cwd=REPO, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return model_dir, json.loads((model_dir / "metrics.json").read_text())


def test_pipelines_train_learns_well_above_popularity(trained):
    model_dir, metrics = trained
    job = json.loads((model_dir / "job_config.json").read_text())
    assert job["backbone"] == "bert4rec" and job["mask_prob"] == 0.2 and job["num_layers"] == 2
    for split in ("valid", "test"):
        assert metrics[split]["hr@10"] >= 2 * metrics["popularity"][split]["hr@10"], (split, metrics[split], metrics["popularity"])


def test_export_serves_and_reevaluates(trained, small_world, tmp_path):
    from peterrec.evaluation import evaluate_export

    model_dir, metrics = trained
    loaded = export.load_export(str(model_dir))
    assert loaded.config["backbone_name"] == "bert4rec" and type(loaded.backbone).__name__ == "BERT4RecBackbone"
    ranked = loaded.recommend([["i1", "i2", "i3"]], top_k=5)[0]
    assert len(ranked) == 5 and all(item not in ("[PAD]", "[MASK]") for item, _ in ranked)
    again = evaluate_export(str(model_dir), split="test", output=str(tmp_path / "eval.json"))
    for key in ("hr@10", "ndcg@10", "mrr@10"):
        assert again["test"][key] == pytest.approx(metrics["test"][key], abs=1e-6)
