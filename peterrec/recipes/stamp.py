"""STAMP (short-term attention/memory priority), RecBole 1.2.1 defaults, trained as NextItNet is: next item at every window position."""

from peterrec import recipes
from peterrec.models.stamp import STAMPBackbone
from peterrec.pretraining import PretrainConfig, build_zoo_backbone, run
from peterrec.tasks.next_item import NextItemTask

recipes.register(recipes.Recipe(
    "stamp", PretrainConfig, run, {"backbone": "stamp"}, layout="windows", causal=True, pipeline="train",
    backbone=STAMPBackbone, build_backbone=build_zoo_backbone, task_class=NextItemTask, family="zoo", order=4,
    summary="STAMP: short-term attention/memory priority (RecBole 1.2.1 defaults, tied output layer)",
))
