"""MIIR (Yuan et al. 2021): fusion self-attention over items and their side information, MII pretraining.

``pipelines.pretrain --backbone miir`` runs the MII stage (``stage="mii"``);
``pipelines.train --model miir [--pretrained ...]`` the next-item stage. The
settings and the job are in :mod:`peterrec.tasks.side_info`.
"""

import dataclasses

from peterrec import recipes
from peterrec.tasks.side_info import MIIRConfig, run_miir

recipes.register(recipes.Recipe(
    "miir", MIIRConfig, run_miir, layout="mii_cells", causal=True, pipeline="train", order=8,
    own_defaults=tuple(field.name for field in dataclasses.fields(MIIRConfig)),  # unset flags keep the original's defaults
    summary="MIIR: item-attribute fusion self-attention with masked item-info (MII) pretraining",
))
