"""NARM (GRU encoder with attention), RecBole 1.2.1 defaults, trained as NextItNet is: next item at every window position."""

from peterrec import recipes
from peterrec.models.narm import NARMBackbone
from peterrec.pretraining import PretrainConfig, build_zoo_backbone, run
from peterrec.tasks.next_item import NextItemTask

recipes.register(recipes.Recipe(
    "narm", PretrainConfig, run, {"backbone": "narm"}, layout="windows", causal=True, pipeline="train",
    backbone=NARMBackbone, build_backbone=build_zoo_backbone, task_class=NextItemTask, family="zoo", order=3,
    summary="NARM: GRU encoder with attention (RecBole 1.2.1 defaults, tied output layer)",
))
