"""GRU4Rec (GRU over the session), RecBole 1.2.1 defaults, trained as NextItNet is: next item at every window position."""

from peterrec import recipes
from peterrec.models.gru4rec import GRU4RecBackbone
from peterrec.pretraining import PretrainConfig, build_zoo_backbone, run
from peterrec.tasks.next_item import NextItemTask

recipes.register(recipes.Recipe(
    "gru4rec", PretrainConfig, run, {"backbone": "gru4rec"}, layout="windows", causal=True, pipeline="train",
    backbone=GRU4RecBackbone, build_backbone=build_zoo_backbone, task_class=NextItemTask, family="zoo", order=5,
    summary="GRU4Rec: GRU over the session (RecBole 1.2.1 defaults, tied output layer)",
))
