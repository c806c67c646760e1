"""BERT4Rec (Sun et al. 2019): a bidirectional transformer trained to recover masked items.

The worked example of docs/adding_a_model.md: this file and
peterrec/backbones/bert4rec.py are all it takes; ``python -m pipelines.train
--model bert4rec`` then trains, evaluates and exports it like every model.
It reuses the shared sequence config (``PretrainConfig``: the zoo settings
``--num_layers``, ``--num_heads``, ``--inner_size``, ``--hidden_dropout``,
``--attn_dropout`` and the cloze settings ``--mask_prob``,
``--max_predictions``), the GRec cloze layout and ``MaskedItemTask``.
"""

from peterrec import recipes
from peterrec.backbones.bert4rec import BERT4RecBackbone
from peterrec.pretraining import PretrainConfig, build_zoo_backbone, run
from peterrec.tasks.masked_item import MaskedItemTask


def build(cfg, vocabulary_size):
    """The encoder with a position table of ``max_len`` rows (a cloze chunk is at most ``max_len`` items)."""
    return build_zoo_backbone(cfg, vocabulary_size, max_positions=cfg.max_len)


recipes.register(recipes.Recipe(
    "bert4rec", PretrainConfig, run, {"backbone": "bert4rec"},
    defaults={"mask_prob": 0.2},  # RecBole's mask_ratio (GRec's 0.3 is the shared default)
    layout="cloze", causal=False, pipeline="train",
    backbone=BERT4RecBackbone, build_backbone=build, task_class=MaskedItemTask, family="zoo",
    summary="BERT4Rec: bidirectional self-attention, masked-item (cloze) objective",
))
