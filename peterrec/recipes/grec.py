"""The GRec encoder: NextItNet's CNN made non-causal, trained to recover masked items (cloze chunks)."""

from peterrec import recipes
from peterrec.backbones.nextitnet import NextItNetBackbone
from peterrec.pretraining import PretrainConfig, run
from peterrec.recipes.nextitnet import build_cnn
from peterrec.tasks.masked_item import MaskedItemTask

recipes.register(recipes.Recipe(
    "grec", PretrainConfig, run, {"backbone": "grec"}, layout="cloze", causal=False, pipeline="pretrain",
    backbone=NextItNetBackbone, build_backbone=lambda cfg, vocabulary_size: build_cnn(cfg, vocabulary_size, causal=False),
    task_class=MaskedItemTask, family="cnn", order=1,
    summary="GRec encoder (Yuan et al. 2020): non-causal dilated CNN, masked-item objective",
))
