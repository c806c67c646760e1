"""Data augmentation for sequential recommendation: CASR (counterfactual samples from a sampler model).

See :mod:`peterrec.augment.casr` (the job), :mod:`peterrec.augment.generate`
(the interventions), :mod:`peterrec.augment.task` (the anchor's training task)
and :mod:`peterrec.augment.embeddings` (running a model from input embeddings).
"""
