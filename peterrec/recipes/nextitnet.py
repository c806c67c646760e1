"""NextItNet: the causal dilated CNN, next item at every position of the training windows (pipelines.pretrain)."""

from peterrec import recipes
from peterrec.backbones.nextitnet import NextItNetBackbone
from peterrec.pretraining import PretrainConfig, run
from peterrec.tasks.next_item import NextItemTask


def build_cnn(cfg, vocabulary_size, causal=True):
    """NextItNet's CNN from the shared sequence config (``causal=False``: the GRec encoder)."""
    return NextItNetBackbone(
        vocabulary_size=vocabulary_size,
        embedding_dim=cfg.embedding_dim,
        dilations=list(cfg.dilations),
        kernel_size=cfg.kernel_size,
        causal=causal,
        dropout=cfg.dropout,
        mask_padding=not cfg.pad_as_item,
        max_positions=cfg.max_len + 1 if cfg.positional_embedding else 0,
    )


recipes.register(recipes.Recipe(
    "nextitnet", PretrainConfig, run, {"backbone": "nextitnet"}, layout="windows", causal=True, pipeline="pretrain",
    backbone=NextItNetBackbone, build_backbone=build_cnn, task_class=NextItemTask, family="cnn", order=0,
    summary="NextItNet (Yuan et al. 2019): causal dilated CNN, next item at every position",
))
