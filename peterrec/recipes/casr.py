"""CASR (Wang et al. 2021): counterfactual sequences from a sampler model, an anchor trained on observed + generated data.

``pipelines.casr`` trains :class:`~peterrec.augment.casr.CASRConfig` with
:func:`~peterrec.augment.casr.run`; the sampler and the anchor are any causal
window recipe (:func:`peterrec.augment.casr.causal_models`).
"""

from peterrec import recipes
from peterrec.augment.casr import CASRConfig, run

recipes.register(recipes.Recipe(
    "casr", CASRConfig, run, layout="counterfactual", causal=False, pipeline="casr", order=10,
    summary="CASR: counterfactual data augmentation (heuristic, learning, ad) for a causal anchor model",
))
