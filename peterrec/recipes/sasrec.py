"""SASRec (causal self-attention), RecBole 1.2.1 defaults, trained as NextItNet is: next item at every window position."""

from peterrec import recipes
from peterrec.models.sasrec import SASRecBackbone
from peterrec.pretraining import PretrainConfig, build_zoo_backbone, run
from peterrec.tasks.next_item import NextItemTask


def build(cfg, vocabulary_size):
    """SASRec with its position table of ``max_len`` rows (RecBole's ``MAX_ITEM_LIST_LENGTH``)."""
    return build_zoo_backbone(cfg, vocabulary_size, max_positions=cfg.max_len)


recipes.register(recipes.Recipe(
    "sasrec", PretrainConfig, run, {"backbone": "sasrec"}, layout="windows", causal=True, pipeline="train",
    backbone=SASRecBackbone, build_backbone=build, task_class=NextItemTask, family="zoo", order=2,
    summary="SASRec: causal self-attention (RecBole 1.2.1 defaults, tied output layer)",
))
