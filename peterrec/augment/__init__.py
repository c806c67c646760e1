"""Data augmentation for sequential recommendation: CASR (counterfactual samples from a sampler model).

See :mod:`peterrec.recipes.casr` (the job and its settings), :mod:`peterrec.augment.casr`
(its stages), :mod:`peterrec.augment.generate` (stage 2 over training prefixes),
:mod:`peterrec.augment.counterfactual` (the interventions), :mod:`peterrec.augment.task`
(the anchor's training task) and :mod:`peterrec.augment.embeddings` (running a model
from input embeddings).
"""
