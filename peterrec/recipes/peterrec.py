"""PeterRec (Yuan et al. 2020): a pretrained NextItNet/GRec export, frozen, with model patches and a new target head.

``pipelines.finetune`` trains :class:`~peterrec.finetuning.FinetuneConfig` with
:func:`~peterrec.finetuning.run` on per-user target pairs: cold-start target
items (``--task items``) or a user class (``--task classify``); the baselines
FineAll, FineLast, FineCLS and from scratch are its ``--mode`` values.
"""

from peterrec import recipes
from peterrec.finetuning import FinetuneConfig, run

recipes.register(recipes.Recipe(
    "peterrec", FinetuneConfig, run, layout="target_pairs", causal=False, classification=True, pipeline="finetune", order=9,
    own_defaults=("epochs", "max_len"),  # finetuning's own: 20 epochs, the export's max_len + the separator slots
    summary="PeterRec: parameter-efficient transfer from a pretrained sequence encoder (items or user classes)",
))
